//! Request bodies and query strings, decoded and converted into the controller's typed options.
//!
//! Every decoder here is pure and total: any input gives a value or an [`ApiError`] with a 4xx
//! status and a message naming the field (the property tests feed them arbitrary bytes and JSON).
//! Docker's bodies are decoded leniently (unknown fields ignored, `null` accepted wherever Go
//! would send it), cnm's own strictly (unknown fields refused).

use std::collections::{BTreeMap, BTreeSet};

use cnm::{
    EndpointOptions, JoinOption, JoinOptions, NetworkOptions, RawEndpointIpam, RawEndpointOptions,
    RawIpam, RawIpamConfig, RawJoinOptions, RawNetworkOptions,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The largest request body accepted (larger ones get 413).
pub const MAX_BODY: usize = 1 << 20;

/// Decodes a JSON body, naming the path of the offending field in the error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid request body: it is empty"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid request body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid request body: field {path}: {inner}"))
        }
    })
}

/// A name the user gives an object: Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 255 bytes
/// (so no `/`, no `..` and never empty).
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > 255
        || !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(ApiError::bad_request(format!(
            "invalid {what} {name:?}: it must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 255 bytes)"
        )));
    }
    Ok(())
}

// ---- Docker's bodies ----

/// `POST /networks/create` as the docker CLI sends it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerNetworkCreate {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Driver")]
    pub driver: Option<String>,
    #[serde(rename = "Scope")]
    pub scope: Option<String>,
    #[serde(rename = "Internal")]
    pub internal: Option<bool>,
    #[serde(rename = "Attachable")]
    pub attachable: Option<bool>,
    #[serde(rename = "Ingress")]
    pub ingress: Option<bool>,
    #[serde(rename = "ConfigOnly")]
    pub config_only: Option<bool>,
    #[serde(rename = "ConfigFrom")]
    pub config_from: Option<DockerConfigFrom>,
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: Option<bool>,
    #[serde(rename = "IPAM")]
    pub ipam: Option<DockerIpam>,
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(rename = "Labels")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Docker's `ConfigFrom`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerConfigFrom {
    #[serde(rename = "Network")]
    pub network: Option<String>,
}

/// Docker's `IPAM` as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerIpam {
    #[serde(rename = "Driver")]
    pub driver: Option<String>,
    #[serde(rename = "Config")]
    pub config: Option<Vec<DockerIpamConfig>>,
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
}

/// One `IPAM.Config` entry as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerIpamConfig {
    #[serde(rename = "Subnet")]
    pub subnet: Option<String>,
    #[serde(rename = "IPRange")]
    pub ip_range: Option<String>,
    #[serde(rename = "Gateway")]
    pub gateway: Option<String>,
    #[serde(rename = "AuxiliaryAddresses")]
    pub aux: Option<BTreeMap<String, String>>,
}

/// A network to create, parsed.
#[derive(Debug)]
pub struct NetworkCreate {
    /// The name.
    pub name: String,
    /// The driver (`bridge` when not given).
    pub driver: String,
    /// Typed options.
    pub options: NetworkOptions,
}

impl DockerNetworkCreate {
    /// Validates and converts into the controller's options.
    pub fn parse(self) -> Result<NetworkCreate, ApiError> {
        check_name("network name", &self.name)?;
        let driver = match self.driver.as_deref() {
            None | Some("") => "bridge".to_owned(),
            Some(d) => d.to_owned(),
        };
        match self.scope.as_deref() {
            None | Some("") | Some("local") => {}
            Some(s) => {
                return Err(ApiError::bad_request(format!(
                    "invalid Scope {s:?}: only local networks are supported"
                )));
            }
        }
        for (field, on) in [("Ingress", self.ingress), ("ConfigOnly", self.config_only)] {
            if on == Some(true) {
                return Err(ApiError::bad_request(format!(
                    "{field} networks are not supported"
                )));
            }
        }
        if let Some(from) = self.config_from.and_then(|c| c.network)
            && !from.is_empty()
        {
            return Err(ApiError::bad_request(format!(
                "invalid ConfigFrom {from:?}: config-only networks are not supported"
            )));
        }
        let ipam = self.ipam.unwrap_or_default();
        let raw = RawNetworkOptions {
            ipam: RawIpam {
                driver: ipam.driver.unwrap_or_default(),
                config: ipam
                    .config
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| RawIpamConfig {
                        subnet: c.subnet.unwrap_or_default(),
                        ip_range: c.ip_range.unwrap_or_default(),
                        gateway: c.gateway.unwrap_or_default(),
                        auxiliary_addresses: c.aux.unwrap_or_default(),
                    })
                    .collect(),
                options: ipam.options.unwrap_or_default(),
            },
            options: self.options.unwrap_or_default(),
            labels: self.labels.unwrap_or_default(),
            internal: self.internal,
            enable_ipv6: self.enable_ipv6,
            enable_ipv4: self.enable_ipv4,
        };
        let options = NetworkOptions::try_from(raw)?;
        Ok(NetworkCreate {
            name: self.name,
            driver,
            options,
        })
    }
}

/// `POST /networks/{id}/connect` as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerConnect {
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "EndpointConfig")]
    pub endpoint_config: Option<DockerEndpointConfig>,
}

/// Docker's `EndpointSettings` (the parts that mean something here).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerEndpointConfig {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<DockerEndpointIpam>,
    #[serde(rename = "Aliases")]
    pub aliases: Option<Vec<String>>,
    #[serde(rename = "DNSNames")]
    pub dns_names: Option<Vec<String>>,
    #[serde(rename = "MacAddress")]
    pub mac_address: Option<String>,
    #[serde(rename = "DriverOpts")]
    pub driver_opts: Option<BTreeMap<String, String>>,
    #[serde(rename = "GwPriority")]
    pub gw_priority: Option<i32>,
}

/// Docker's `EndpointIPAMConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerEndpointIpam {
    #[serde(rename = "IPv4Address")]
    pub ipv4: Option<String>,
    #[serde(rename = "IPv6Address")]
    pub ipv6: Option<String>,
}

/// An endpoint to create and join, parsed.
#[derive(Debug)]
pub struct Connect {
    /// The sandbox (container) key.
    pub container: String,
    /// The endpoint's options.
    pub endpoint: EndpointOptions,
    /// The join's options (gateway priority).
    pub join: Vec<JoinOption>,
}

impl DockerConnect {
    /// Validates and converts.
    pub fn parse(self) -> Result<Connect, ApiError> {
        if self.container.is_empty() {
            return Err(ApiError::bad_request("invalid Container \"\": it is empty"));
        }
        let ec = self.endpoint_config.unwrap_or_default();
        let ipam = ec.ipam_config.unwrap_or_default();
        let raw = RawEndpointOptions {
            ipam_config: RawEndpointIpam {
                ipv4_address: ipam.ipv4.unwrap_or_default(),
                ipv6_address: ipam.ipv6.unwrap_or_default(),
            },
            mac_address: ec.mac_address.unwrap_or_default(),
            aliases: ec.aliases.unwrap_or_default(),
            dns_names: ec.dns_names.unwrap_or_default(),
            driver_opts: ec.driver_opts.unwrap_or_default(),
            ..Default::default()
        };
        Ok(Connect {
            container: self.container,
            endpoint: EndpointOptions::try_from(raw)?,
            join: gateway_priority(ec.gw_priority),
        })
    }
}

fn gateway_priority(p: Option<i32>) -> Vec<JoinOption> {
    p.filter(|p| *p != 0)
        .map(JoinOption::gateway_priority)
        .into_iter()
        .collect()
}

/// `POST /networks/{id}/disconnect` as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DockerDisconnect {
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "Force")]
    pub force: Option<bool>,
}

impl DockerDisconnect {
    /// Validates; returns the container key.
    pub fn parse(self) -> Result<String, ApiError> {
        if self.container.is_empty() {
            return Err(ApiError::bad_request("invalid Container \"\": it is empty"));
        }
        Ok(self.container)
    }
}

// ---- cnm's own bodies (strict) ----

/// `POST /cnm/v1/sandboxes`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SandboxCreate {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Hostname", default)]
    pub hostname: Option<String>,
    #[serde(rename = "Domainname", default)]
    pub domainname: Option<String>,
    #[serde(rename = "ExtraHosts", default)]
    pub extra_hosts: Option<Vec<String>>,
    #[serde(rename = "Dns", default)]
    pub dns: Option<Vec<String>>,
    #[serde(rename = "DnsSearch", default)]
    pub dns_search: Option<Vec<String>>,
    #[serde(rename = "DnsOptions", default)]
    pub dns_options: Option<Vec<String>>,
}

impl SandboxCreate {
    /// Validates; returns the name and the sandbox options.
    pub fn parse(self) -> Result<(String, JoinOptions), ApiError> {
        check_name("sandbox name", &self.name)?;
        let raw = RawJoinOptions {
            hostname: self.hostname.unwrap_or_default(),
            domainname: self.domainname.unwrap_or_default(),
            extra_hosts: self.extra_hosts.unwrap_or_default(),
            dns: self.dns.unwrap_or_default(),
            dns_search: self.dns_search.unwrap_or_default(),
            dns_options: self.dns_options.unwrap_or_default(),
            gw_priority: 0,
        };
        Ok((self.name, JoinOptions::try_from(raw)?))
    }
}

/// `POST /cnm/v1/sandboxes/{key}/connect`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SandboxConnect {
    #[serde(rename = "Network")]
    pub network: String,
    #[serde(rename = "IPv4Address", default)]
    pub ipv4: Option<String>,
    #[serde(rename = "IPv6Address", default)]
    pub ipv6: Option<String>,
    #[serde(rename = "MacAddress", default)]
    pub mac: Option<String>,
    #[serde(rename = "Aliases", default)]
    pub aliases: Option<Vec<String>>,
    #[serde(rename = "DnsNames", default)]
    pub dns_names: Option<Vec<String>>,
    #[serde(rename = "Ports", default)]
    pub ports: Option<Vec<String>>,
    #[serde(rename = "GatewayPriority", default)]
    pub gateway_priority: Option<i32>,
}

impl SandboxConnect {
    /// Validates; returns the network key, the endpoint options and the join options.
    pub fn parse(self) -> Result<(String, EndpointOptions, Vec<JoinOption>), ApiError> {
        if self.network.is_empty() {
            return Err(ApiError::bad_request("invalid Network \"\": it is empty"));
        }
        let raw = RawEndpointOptions {
            ipam_config: RawEndpointIpam {
                ipv4_address: self.ipv4.unwrap_or_default(),
                ipv6_address: self.ipv6.unwrap_or_default(),
            },
            mac_address: self.mac.unwrap_or_default(),
            aliases: self.aliases.unwrap_or_default(),
            dns_names: self.dns_names.unwrap_or_default(),
            port_bindings: self.ports.unwrap_or_default(),
            ..Default::default()
        };
        Ok((
            self.network,
            EndpointOptions::try_from(raw)?,
            gateway_priority(self.gateway_priority),
        ))
    }
}

/// `POST /cnm/v1/sandboxes/{key}/disconnect`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SandboxDisconnect {
    #[serde(rename = "Network")]
    pub network: String,
}

impl SandboxDisconnect {
    /// Validates; returns the network key.
    pub fn parse(self) -> Result<String, ApiError> {
        if self.network.is_empty() {
            return Err(ApiError::bad_request("invalid Network \"\": it is empty"));
        }
        Ok(self.network)
    }
}

// ---- query strings ----

/// Docker's `filters` query parameter: key → set of values. Both of Docker's encodings are
/// accepted: `{"name":{"x":true}}` and the older `{"name":["x"]}`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(pub BTreeMap<String, BTreeSet<String>>);

impl Filters {
    /// Parses the `filters` parameter of a raw query string, refusing keys not in `allowed`.
    pub fn from_query(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let Some(raw) = query_param(query.unwrap_or(""), "filters")? else {
            return Ok(Self::default());
        };
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Values {
            Map(BTreeMap<String, bool>),
            List(Vec<String>),
        }
        let map: BTreeMap<String, Values> = serde_json::from_str(&raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filters {raw:?}: {e}")))?;
        let mut out = BTreeMap::new();
        for (key, values) in map {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "invalid filter '{key}' (supported: {})",
                    allowed.join(", ")
                )));
            }
            let set: BTreeSet<String> = match values {
                Values::Map(m) => m
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(k, _)| k)
                    .collect(),
                Values::List(l) => l.into_iter().collect(),
            };
            out.insert(key, set);
        }
        Ok(Self(out))
    }

    /// The values of one key (empty when the key was not given).
    pub fn get(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0.get(key).into_iter().flatten().map(String::as_str)
    }

    /// Whether the key was given with at least one value.
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some_and(|v| !v.is_empty())
    }

    /// True when the key is absent, or `pred` holds for one of its values.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        !self.has(key) || self.get(key).any(pred)
    }

    /// Docker's label filter: every `key` or `key=value` given must match `labels`.
    pub fn labels_match(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.get(key).all(|f| label_matches(f, labels))
    }
}

/// Whether `labels` has the label `key` or `key=value` names.
pub fn label_matches(filter: &str, labels: &BTreeMap<String, String>) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

/// One parameter of a raw query string, percent-decoded; `+` is a space.
pub fn query_param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k)? == name {
            return percent_decode(v).map(Some);
        }
    }
    Ok(None)
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid query string: bad percent-encoding in {s:?}"
        ))
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_cli_create_body_parses() {
        // What docker 28 sends for
        // `network create --subnet 10.9.0.0/24 --gateway 10.9.0.1 --ip-range 10.9.0.128/25
        //  --ipv6 --internal -o com.docker.network.driver.mtu=1400 --label a=b n1`
        let body = br#"{"Name":"n1","CheckDuplicate":true,"Driver":"bridge","Scope":"","EnableIPv4":null,
          "EnableIPv6":true,"IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"10.9.0.0/24",
          "IPRange":"10.9.0.128/25","Gateway":"10.9.0.1"}]},"Internal":true,"Attachable":false,
          "Ingress":false,"ConfigOnly":false,"ConfigFrom":null,"Options":{"com.docker.network.driver.mtu":"1400"},
          "Labels":{"a":"b"}}"#;
        let c = decode::<DockerNetworkCreate>(body)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!((c.name.as_str(), c.driver.as_str()), ("n1", "bridge"));
        assert!(c.options.internal && c.options.enable_ipv6);
        assert_eq!(
            c.options.pools[0].gateway().unwrap().to_string(),
            "10.9.0.1"
        );
        assert_eq!(c.options.labels["a"], "b");
        // Nulls where Go sends nil maps and slices.
        let body =
            br#"{"Name":"n2","IPAM":{"Config":null,"Options":null},"Options":null,"Labels":null}"#;
        let c = decode::<DockerNetworkCreate>(body)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(c.driver, "bridge");
    }

    #[test]
    fn bad_bodies_are_400_naming_the_field() {
        let e = decode::<DockerNetworkCreate>(br#"{"Name":"x","Internal":"yes"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("Internal"), "{}", e.message);
        let e = decode::<SandboxCreate>(br#"{"Name":"x","Bogus":1}"#).unwrap_err();
        assert!(e.message.contains("Bogus"), "{}", e.message);
        let e = decode::<SandboxCreate>(b"{").unwrap_err();
        assert_eq!(e.status, 400);
        let e = decode::<SandboxCreate>(b"").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        for bad in ["", "a/b", "..", ".x", "-x", "a b"] {
            let body = serde_json::to_vec(&serde_json::json!({ "Name": bad })).unwrap();
            let e = decode::<SandboxCreate>(&body).unwrap().parse().unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.contains(&format!("{bad:?}")), "{}", e.message);
        }
        let e = decode::<SandboxConnect>(br#"{"Network":"n","Ports":["99999"]}"#)
            .unwrap()
            .parse()
            .unwrap_err();
        assert!(e.message.contains("99999"), "{}", e.message);
    }

    #[test]
    fn filters_in_both_encodings() {
        let q =
            "filters=%7B%22name%22%3A%7B%22web%22%3Atrue%7D%2C%22label%22%3A%5B%22a%3Db%22%5D%7D";
        let f = Filters::from_query(Some(q), &["name", "label"]).unwrap();
        assert_eq!(f.get("name").collect::<Vec<_>>(), ["web"]);
        let labels = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
        assert!(f.labels_match("label", &labels));
        assert!(!f.labels_match("label", &BTreeMap::new()));
        let e = Filters::from_query(Some(q), &["name"]).unwrap_err();
        assert!(e.message.contains("label"), "{}", e.message);
        assert_eq!(Filters::from_query(None, &[]).unwrap(), Filters::default());
        assert!(Filters::from_query(Some("filters=%zz"), &[]).is_err());
    }
}
