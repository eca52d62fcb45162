//! Request bodies and query strings, decoded and converted into the controller's typed options.
//!
//! The bodies' shapes are `cnm-api`'s (the CLI builds the same types); this module decodes them
//! ([`decode`]) and turns them into the controller's options ([`Parse`]). Every decoder here is
//! pure and total: any input gives a value or an [`ApiError`] with a 4xx status and a message
//! naming the field (the property tests feed them arbitrary bytes and JSON). Docker's bodies are
//! decoded leniently (unknown fields ignored, `null` accepted wherever Go would send it), cnm's
//! own strictly (unknown fields refused; published ports parsed in the one `-p` grammar).

use cnm::{
    EndpointOptions, JoinOption, JoinOptions, NetworkOptions, RawEndpointIpam, RawEndpointOptions,
    RawIpam, RawIpamConfig, RawJoinOptions, RawNetworkOptions,
};
use cnm_api::docker::{
    Filters, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use cnm_api::v1::{SandboxConnectRequest, SandboxCreateRequest, SandboxDisconnectRequest};
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

/// A key (`Container`, `Network`) a body must not leave empty.
fn non_empty(field: &str, value: String) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad_request(format!(
            "invalid {field} \"\": it is empty"
        )));
    }
    Ok(value)
}

/// A decoded body, validated and converted into what the controller takes.
pub trait Parse {
    /// The converted value.
    type Parsed;
    /// Validates and converts; a refusal is a 400 naming the field and the value.
    fn parse(self) -> Result<Self::Parsed, ApiError>;
}

// ---- Docker's bodies ----

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

impl Parse for NetworkCreateRequest {
    type Parsed = NetworkCreate;

    fn parse(self) -> Result<NetworkCreate, ApiError> {
        check_name("network name", &self.name)?;
        let driver = match self.driver.as_deref() {
            None | Some("") => "bridge".to_owned(),
            Some(d) => d.to_owned(),
        };
        match self.scope.as_deref() {
            None | Some("") | Some("local") => {}
            // dockerd's words: cnmd is never part of a swarm.
            Some("swarm") => {
                return Err(ApiError::forbidden(
                    "cannot create a swarm scoped network when swarm is not active",
                ));
            }
            Some(s) => {
                return Err(ApiError::bad_request(format!(
                    "invalid Scope {s:?}: only local networks are supported"
                )));
            }
        }
        if self.ingress == Some(true) {
            return Err(ApiError::forbidden(
                "Ingress network can only be global scope network",
            ));
        }
        if self.config_only == Some(true) {
            return Err(ApiError::bad_request(
                "ConfigOnly networks are not supported",
            ));
        }
        if let Some(from) = self.config_from.map(|c| c.network)
            && !from.is_empty()
        {
            return Err(ApiError::bad_request(format!(
                "invalid ConfigFrom {from:?}: config-only networks are not supported"
            )));
        }
        let ipam = self.ipam.unwrap_or_default();
        // Subnets as written: one with host bits set is the network's subnet as far as the
        // controller goes, and shown as written, as dockerd does.
        let written: Vec<Option<ipnet::IpNet>> =
            ipam.config.iter().map(|c| c.subnet.parse().ok()).collect();
        let raw = RawNetworkOptions {
            ipam: RawIpam {
                driver: ipam.driver,
                config: ipam
                    .config
                    .into_iter()
                    .map(|c| RawIpamConfig {
                        subnet: network_address(c.subnet),
                        ip_range: c.ip_range,
                        gateway: c.gateway,
                        auxiliary_addresses: c.auxiliary_addresses,
                    })
                    .collect(),
                options: ipam.options.clone().unwrap_or_default(),
            },
            options: self.options.unwrap_or_default(),
            labels: self.labels.unwrap_or_default(),
            internal: self.internal,
            enable_ipv6: self.enable_ipv6,
            enable_ipv4: self.enable_ipv4,
        };
        let mut options =
            NetworkOptions::try_from(raw)?.attachable(self.attachable.unwrap_or(false));
        // `NetworkOptions::try_from` keeps the configs' order, one pool each.
        for (pool, given) in options.pools.iter_mut().zip(written) {
            if let Some(given) = given.filter(|g| g.trunc() != *g) {
                *pool = pool.clone().written_as(given)?;
            }
        }
        // `IPAM.Options` as sent: `{}` stays `{}` and an absent one stays null, as dockerd shows.
        options.ipam_options = ipam.options;
        Ok(NetworkCreate {
            name: self.name,
            driver,
            options,
        })
    }
}

/// A subnet given with host bits set (`10.12.0.1/24`) as its network (`10.12.0.0/24`): dockerd
/// accepts it so (and shows it as written, see `PoolConfig::written_as`), and so does cnmd.
/// Anything that does not parse is left for the controller to
/// refuse, naming it.
fn network_address(subnet: String) -> String {
    match subnet.parse::<ipnet::IpNet>() {
        Ok(net) if net.trunc() != net => net.trunc().to_string(),
        _ => subnet,
    }
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

impl Parse for NetworkConnectRequest {
    type Parsed = Connect;

    fn parse(self) -> Result<Connect, ApiError> {
        let container = non_empty("Container", self.container)?;
        let ec = self.endpoint_config.unwrap_or_default();
        let ipam = ec.ipam_config.unwrap_or_default();
        let raw = RawEndpointOptions {
            ipam_config: RawEndpointIpam {
                ipv4_address: ipam.ipv4_address.unwrap_or_default(),
                ipv6_address: ipam.ipv6_address.unwrap_or_default(),
            },
            mac_address: ec.mac_address.unwrap_or_default(),
            aliases: ec.aliases.unwrap_or_default(),
            dns_names: ec.dns_names.unwrap_or_default(),
            driver_opts: ec.driver_opts.unwrap_or_default(),
            ..Default::default()
        };
        Ok(Connect {
            container,
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

impl Parse for NetworkDisconnectRequest {
    /// The container key.
    type Parsed = String;

    fn parse(self) -> Result<String, ApiError> {
        non_empty("Container", self.container)
    }
}

// ---- cnm's own bodies (strict) ----

impl Parse for SandboxCreateRequest {
    /// The name and the sandbox options.
    type Parsed = (String, JoinOptions);

    fn parse(self) -> Result<(String, JoinOptions), ApiError> {
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
        let mut options = JoinOptions::try_from(raw)?;
        options.host_namespace = self.host_namespace.unwrap_or(false);
        Ok((self.name, options))
    }
}

impl Parse for SandboxConnectRequest {
    /// The network key, the endpoint options and the join options.
    type Parsed = (String, EndpointOptions, Vec<JoinOption>);

    fn parse(self) -> Result<(String, EndpointOptions, Vec<JoinOption>), ApiError> {
        let network = non_empty("Network", self.network)?;
        let raw = RawEndpointOptions {
            ipam_config: RawEndpointIpam {
                ipv4_address: self.ipv4_address.unwrap_or_default(),
                ipv6_address: self.ipv6_address.unwrap_or_default(),
            },
            mac_address: self.mac_address.unwrap_or_default(),
            aliases: self.aliases.unwrap_or_default(),
            dns_names: self.dns_names.unwrap_or_default(),
            ..Default::default()
        };
        // The ports were parsed (and validated) in the one grammar as the body was decoded: they
        // go to the controller as they are, not back through strings.
        let endpoint = self
            .ports
            .into_iter()
            .fold(EndpointOptions::try_from(raw)?, EndpointOptions::publish);
        Ok((network, endpoint, gateway_priority(self.gateway_priority)))
    }
}

impl Parse for SandboxDisconnectRequest {
    /// The network key.
    type Parsed = String;

    fn parse(self) -> Result<String, ApiError> {
        non_empty("Network", self.network)
    }
}

// ---- query strings ----

/// Parses Docker's `filters` parameter of a raw query string (either of Docker's encodings, see
/// [`Filters`]), refusing keys not in `allowed`.
pub fn filters(query: Option<&str>, allowed: &[&str]) -> Result<Filters, ApiError> {
    let Some(raw) = query_param(query.unwrap_or(""), "filters")? else {
        return Ok(Filters::default());
    };
    if raw.trim().is_empty() {
        return Ok(Filters::default());
    }
    let filters: Filters = serde_json::from_str(&raw)
        .map_err(|e| ApiError::bad_request(format!("invalid filters {raw:?}: {e}")))?;
    if let Some(key) = filters.keys().find(|k| !allowed.contains(k)) {
        // dockerd's words (`filters.Validate`).
        return Err(ApiError::bad_request(format!("Invalid filter '{key}'")));
    }
    Ok(filters)
}

/// [`filters`] without a check of the keys: `GET /events` ignores the ones it does not know,
/// as dockerd does.
pub fn any_filters(query: Option<&str>) -> Result<Filters, ApiError> {
    let Some(raw) = query_param(query.unwrap_or(""), "filters")? else {
        return Ok(Filters::default());
    };
    if raw.trim().is_empty() {
        return Ok(Filters::default());
    }
    serde_json::from_str(&raw)
        .map_err(|e| ApiError::bad_request(format!("invalid filters {raw:?}: {e}")))
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
        let c = decode::<NetworkCreateRequest>(body)
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
        let c = decode::<NetworkCreateRequest>(body)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(c.driver, "bridge");
    }

    #[test]
    fn bad_bodies_are_400_naming_the_field() {
        let e = decode::<NetworkCreateRequest>(br#"{"Name":"x","Internal":"yes"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("Internal"), "{}", e.message);
        let e = decode::<SandboxCreateRequest>(br#"{"Name":"x","Bogus":1}"#).unwrap_err();
        assert!(e.message.contains("Bogus"), "{}", e.message);
        let e = decode::<SandboxCreateRequest>(b"{").unwrap_err();
        assert_eq!(e.status, 400);
        let e = decode::<SandboxCreateRequest>(b"").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        for bad in ["", "a/b", "..", ".x", "-x", "a b"] {
            let body = serde_json::to_vec(&serde_json::json!({ "Name": bad })).unwrap();
            let e = decode::<SandboxCreateRequest>(&body)
                .unwrap()
                .parse()
                .unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.contains(&format!("{bad:?}")), "{}", e.message);
        }
        // A published port is parsed as the body is decoded: the path names the entry.
        let e = decode::<SandboxConnectRequest>(br#"{"Network":"n","Ports":["80","99999"]}"#)
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("Ports[1]") && e.message.contains("\"99999\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn filters_in_both_encodings() {
        let q =
            "filters=%7B%22name%22%3A%7B%22web%22%3Atrue%7D%2C%22label%22%3A%5B%22a%3Db%22%5D%7D";
        let f = filters(Some(q), &["name", "label"]).unwrap();
        assert_eq!(f.get("name").collect::<Vec<_>>(), ["web"]);
        assert_eq!(f.get("label").collect::<Vec<_>>(), ["a=b"]);
        let e = filters(Some(q), &["name"]).unwrap_err();
        assert!(e.message.contains("label"), "{}", e.message);
        assert_eq!(filters(None, &[]).unwrap(), Filters::default());
        assert!(filters(Some("filters=%zz"), &[]).is_err());
        assert!(filters(Some("filters=%7B%22name%22%3A1%7D"), &["name"]).is_err());
    }
}
