//! Network options: IPAM pools per family, IPv4/IPv6 switches, internal, labels, driver options.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::reserved::{check_subnet, refusal};
use super::{parse_bool, parse_ip, parse_subnet};
use crate::CoreError;
use crate::spi::DriverOptions;

/// Docker's option key that turns IPv6 on.
pub const KEY_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// Docker's option key that turns IPv4 off (IPv6-only networks).
pub const KEY_ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
/// Docker's option key that makes a network internal.
pub const KEY_INTERNAL: &str = "com.docker.network.internal";
/// Docker's generic label for the MTU of a network's interfaces (libnetwork's
/// `netlabel.DriverMTU`, which Docker passes to every driver). Core owns it: checks it once
/// against the network's families (see [`check_mtu`]) and hands drivers the number
/// ([`NetworkSpec::mtu`](crate::spi::NetworkSpec::mtu)); it stays among the options as given.
pub const KEY_DRIVER_MTU: &str = "com.docker.network.driver.mtu";
/// cnm's option key that lets a network's subnet overlap a network the host is on (see
/// [`NetworkOptions::allow_host_overlap`]). Consumed by core, never passed to the driver.
pub const KEY_ALLOW_HOST_OVERLAP: &str = "com.cnm.network.allow_host_overlap";

/// cnm's generic label that turns the embedded DNS off for a network (`false`; default `true`
/// for a network whose driver gives its endpoints addresses). Docker's default `bridge` network
/// has no embedded DNS: cnmd creates it with this key set to `false`. Core owns it (see
/// [`NetworkOptions::embedded_dns`]); it stays among the options as given.
pub const KEY_EMBEDDED_DNS: &str = "com.cnm.network.embedded_dns";

/// cnm's generic label naming a network's own upstream DNS servers: `IP[,IP…]`, each optionally
/// with a port (`192.0.2.53`, `192.0.2.53:5353`, `[2001:db8::53]:53`). The embedded DNS forwards
/// names it does not own, for a sandbox on this network, to these servers instead of the host's
/// resolv.conf; a sandbox's own `--dns` still wins. Asked from the host's namespace (a loopback
/// one is the host's). Docker's API has no such field: it is set as a driver option
/// (`cnm network create -o com.cnm.network.dns=192.0.2.53 …`). Core owns it (see
/// [`NetworkOptions::dns_servers`]); it stays among the options as given.
pub const KEY_DNS_SERVERS: &str = "com.cnm.network.dns";

/// At most this many servers in [`KEY_DNS_SERVERS`] (resolv.conf's `MAXNS` is 3; a few more
/// are allowed, since the embedded DNS hedges across them).
pub const MAX_DNS_SERVERS: usize = 8;

/// cnm's generic label marking one of the networks a daemon makes itself and keeps (Docker's
/// predefined `bridge`, `host` and `none`): `true` refuses its deletion
/// ([`CoreError::PredefinedNetwork`]). Core owns it; it is not among the options Docker's view
/// shows ([`NetworkOptions::as_docker_options`]).
pub const KEY_PREDEFINED: &str = "com.cnm.network.predefined";

/// The smallest MTU of an IPv4 link (RFC 791).
pub const MIN_MTU_V4: u32 = 68;
/// The smallest MTU of an IPv6 link (RFC 8200); the kernel turns IPv6 off on smaller links.
pub const MIN_MTU_V6: u32 = 1280;
/// The largest MTU (the kernel's `ETH_MAX_MTU`).
pub const MAX_MTU: u32 = 65535;

/// The generic labels core owns among a network's driver options (kept as given, never passed
/// to the driver's parse step).
const GENERIC_KEYS: &[&str] = &[
    KEY_DRIVER_MTU,
    KEY_EMBEDDED_DNS,
    KEY_DNS_SERVERS,
    KEY_PREDEFINED,
];

/// One IPAM pool of a network: a subnet and what is reserved in it. Valid by construction: the
/// range, gateway and auxiliary addresses lie inside the subnet and are of its family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    subnet: IpNet,
    ip_range: Option<IpNet>,
    gateway: Option<IpAddr>,
    aux_addresses: BTreeMap<String, IpAddr>,
    /// The subnet as the user wrote it, when that had host bits set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    as_given: Option<IpNet>,
}

impl PoolConfig {
    /// The IPAM request for one of a network's pools in `family`: this pool as given (subnet,
    /// range, gateway, auxiliary addresses), or any pool of the family for `None`.
    pub(crate) fn request(
        config: Option<&Self>,
        family: cnm_ipam::Family,
    ) -> cnm_ipam::PoolRequest {
        let mut req = cnm_ipam::PoolRequest::new(family);
        if let Some(c) = config {
            req.subnet = Some(c.subnet());
            req.ip_range = c.ip_range();
            req.gateway = c.gateway();
            req.aux_addresses = c.aux_addresses().values().copied().collect();
        }
        req
    }

    /// A pool for `subnet`; host bits are cleared (`10.1.0.7/24` means `10.1.0.0/24`), and
    /// the subnet as written is kept for display ([`PoolConfig::subnet_as_given`]).
    pub fn new(subnet: IpNet) -> Self {
        Self {
            subnet: subnet.trunc(),
            ip_range: None,
            gateway: None,
            aux_addresses: BTreeMap::new(),
            as_given: (subnet.trunc() != subnet).then_some(subnet),
        }
    }

    /// Notes that the user wrote the subnet as `given` (`10.12.0.1/24` for `10.12.0.0/24`):
    /// Docker accepts such a subnet and shows it as written, while the network is the
    /// subnet's. Refused when `given` is not this pool's subnet with host bits.
    pub fn written_as(mut self, given: IpNet) -> Result<Self, CoreError> {
        if given.trunc() != self.subnet {
            return Err(CoreError::invalid(
                "subnet",
                given,
                format!("it is not subnet {} as written", self.subnet),
            ));
        }
        self.as_given = (given != self.subnet).then_some(given);
        Ok(self)
    }

    /// The subnet as the user wrote it (host bits and all); [`PoolConfig::subnet`] otherwise.
    pub fn subnet_as_given(&self) -> IpNet {
        self.as_given.unwrap_or(self.subnet)
    }

    /// Restricts dynamic allocation to `range`, which must lie inside the subnet.
    pub fn with_ip_range(mut self, range: IpNet) -> Result<Self, CoreError> {
        let range = range.trunc();
        if !self.subnet.contains(&range) {
            return Err(self.outside("ip-range", range));
        }
        self.ip_range = Some(range);
        Ok(self)
    }

    /// Sets the gateway, which must lie inside the subnet.
    pub fn with_gateway(mut self, gateway: IpAddr) -> Result<Self, CoreError> {
        if !self.subnet.contains(&gateway) {
            return Err(self.outside("gateway", gateway));
        }
        self.gateway = Some(gateway);
        Ok(self)
    }

    /// Reserves an auxiliary address for the driver, which must lie inside the subnet.
    pub fn with_aux_address(
        mut self,
        name: impl Into<String>,
        ip: IpAddr,
    ) -> Result<Self, CoreError> {
        let name = name.into();
        if !self.subnet.contains(&ip) {
            return Err(self.outside(format!("auxiliary address {name}"), ip));
        }
        self.aux_addresses.insert(name, ip);
        Ok(self)
    }

    /// The refusal of `value`, given for option `field`, which is not inside the subnet.
    fn outside(&self, field: impl Into<String>, value: impl fmt::Display) -> CoreError {
        CoreError::invalid(
            field,
            value,
            format!("it is not inside subnet {}", self.subnet),
        )
    }

    /// The subnet.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// The dynamic range, if restricted.
    pub fn ip_range(&self) -> Option<IpNet> {
        self.ip_range
    }

    /// The gateway, if given.
    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }

    /// The auxiliary addresses, by name.
    pub fn aux_addresses(&self) -> &BTreeMap<String, IpAddr> {
        &self.aux_addresses
    }

    /// Whether this is an IPv6 pool.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.subnet, IpNet::V6(_))
    }
}

/// The typed options of a network. `Default` is Docker's: IPv4 on with a pool from the default
/// address pools, IPv6 off, not internal, the default IPAM.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkOptions {
    /// Explicit pools, of either family (the family is the subnet's). None: IPAM picks one per
    /// enabled family.
    pub pools: Vec<PoolConfig>,
    /// Whether the network has IPv4 (off for an IPv6-only network).
    pub enable_ipv4: bool,
    /// Whether the network has IPv6.
    pub enable_ipv6: bool,
    /// An internal network has no route off its own subnet and never gives a default gateway.
    pub internal: bool,
    /// User labels, kept and shown, never interpreted.
    pub labels: BTreeMap<String, String>,
    /// Driver options as given: the driver's own keys (the driver parses them, checks the values
    /// of the ones it knows, and refuses or keeps the others, see
    /// [`Driver::unknown_network_options`](crate::spi::Driver::unknown_network_options)), and
    /// generic labels core owns ([`KEY_DRIVER_MTU`], [`KEY_EMBEDDED_DNS`],
    /// [`KEY_DNS_SERVERS`]).
    pub driver_options: DriverOptions,
    /// The IPAM driver's name; `None` or `"default"` for the built-in one.
    pub ipam_driver: Option<String>,
    /// Lets a subnet overlap an address or a route the host already has (outside cnm's own
    /// networks). Off by default: such a network takes that LAN away from the host the moment
    /// its bridge comes up. Option key [`KEY_ALLOW_HOST_OVERLAP`].
    pub allow_host_overlap: bool,
    /// Docker's `Attachable` (manual attachment of containers to a swarm network): kept and
    /// shown, never interpreted by a local network.
    pub attachable: bool,
    /// Docker's `IPAM.Options`, kept and shown as given (`None`: the request had none). The
    /// built-in IPAM knows no option, so each is reported by
    /// [`Controller::option_warnings`](crate::Controller::option_warnings).
    pub ipam_options: Option<BTreeMap<String, String>>,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            pools: Vec::new(),
            enable_ipv4: true,
            enable_ipv6: false,
            internal: false,
            labels: BTreeMap::new(),
            driver_options: DriverOptions::new(),
            ipam_driver: None,
            allow_host_overlap: false,
            attachable: false,
            ipam_options: None,
        }
    }
}

impl NetworkOptions {
    /// Adds a pool.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pools.push(pool);
        self
    }

    /// Adds a pool for `subnet` with nothing reserved.
    pub fn subnet(self, subnet: IpNet) -> Self {
        self.pool(PoolConfig::new(subnet))
    }

    cnm_types::setters! {
        /// Turns IPv6 on or off.
        pub fn enable_ipv6(on: bool) => enable_ipv6 = on;
        /// Turns IPv4 on or off.
        pub fn enable_ipv4(on: bool) => enable_ipv4 = on;
        /// Makes the network internal.
        pub fn internal(on: bool) => internal = on;
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    cnm_types::setters! {
        /// Lets the subnets overlap networks the host is on (see the field of the same name).
        pub fn allow_host_overlap(on: bool) => allow_host_overlap = on;
        /// Marks the network attachable (Docker's `Attachable`; kept and shown only).
        pub fn attachable(on: bool) => attachable = on;
    }

    /// Adds a driver option.
    pub fn driver_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.driver_options.insert(key.into(), value.into());
        self
    }

    /// The pools of one family.
    pub fn pools_v4(&self) -> impl Iterator<Item = &PoolConfig> {
        self.pools.iter().filter(|p| !p.is_ipv6())
    }

    /// The IPv6 pools.
    pub fn pools_v6(&self) -> impl Iterator<Item = &PoolConfig> {
        self.pools.iter().filter(|p| p.is_ipv6())
    }

    /// What to allocate in one family: nothing when the family is off, else each pool given
    /// for it, or one default pool (`None`) when none is.
    pub(crate) fn pool_configs(&self, family: cnm_ipam::Family) -> Vec<Option<&PoolConfig>> {
        let v6 = family == cnm_ipam::Family::V6;
        if !(if v6 {
            self.enable_ipv6
        } else {
            self.enable_ipv4
        }) {
            return Vec::new();
        }
        let given: Vec<Option<&PoolConfig>> = self
            .pools
            .iter()
            .filter(|p| p.is_ipv6() == v6)
            .map(Some)
            .collect();
        if given.is_empty() { vec![None] } else { given }
    }

    /// Checks what the public fields can get wrong together: a reserved or too wide subnet
    /// (see [`reserved`](super::reserved)), pools of a disabled family, no family at all,
    /// overlapping pools, an MTU the network's families cannot have, an IPAM driver name that
    /// is empty.
    pub fn validate(&self) -> Result<(), CoreError> {
        for pool in &self.pools {
            check_subnet("subnet", pool.subnet)?;
        }
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(CoreError::invalid(
                "enable_ipv4",
                false,
                "a network needs IPv4 or IPv6 (enable_ipv6 is false too)",
            ));
        }
        for pool in &self.pools {
            if pool.is_ipv6() && !self.enable_ipv6 {
                return Err(CoreError::invalid(
                    "subnet",
                    pool.subnet,
                    "an IPv6 subnet needs enable_ipv6",
                ));
            }
            if !pool.is_ipv6() && !self.enable_ipv4 {
                return Err(CoreError::invalid(
                    "subnet",
                    pool.subnet,
                    "an IPv4 subnet on a network with IPv4 disabled",
                ));
            }
        }
        for (i, a) in self.pools.iter().enumerate() {
            for b in &self.pools[i + 1..] {
                if a.subnet.contains(&b.subnet) || b.subnet.contains(&a.subnet) {
                    return Err(CoreError::invalid(
                        "subnet",
                        b.subnet,
                        format!("it overlaps subnet {} of the same network", a.subnet),
                    ));
                }
            }
        }
        if let Some(name) = &self.ipam_driver
            && name.is_empty()
        {
            return Err(CoreError::invalid("ipam driver", name, "it is empty"));
        }
        self.mtu()?;
        self.embedded_dns()?;
        self.dns_servers()?;
        self.predefined()?;
        Ok(())
    }

    /// The network's own upstream DNS servers ([`KEY_DNS_SERVERS`]), port 53 unless given;
    /// empty when absent.
    pub fn dns_servers(&self) -> Result<Vec<SocketAddr>, CoreError> {
        let Some(value) = self.driver_options.get(KEY_DNS_SERVERS) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<SocketAddr> = Vec::new();
        for item in value.split(',').map(str::trim) {
            let addr = item
                .parse::<SocketAddr>()
                .or_else(|_| item.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    CoreError::invalid(
                        KEY_DNS_SERVERS,
                        value,
                        format!("{item:?} is not an IP address (or IP:port)"),
                    )
                })?;
            if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
                return Err(CoreError::invalid(
                    KEY_DNS_SERVERS,
                    value,
                    format!("{item:?} is not a server's address"),
                ));
            }
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        if out.len() > MAX_DNS_SERVERS {
            return Err(CoreError::invalid(
                KEY_DNS_SERVERS,
                value,
                format!("more than {MAX_DNS_SERVERS} servers"),
            ));
        }
        Ok(out)
    }

    /// Whether the network is predefined ([`KEY_PREDEFINED`]; false when absent).
    pub fn predefined(&self) -> Result<bool, CoreError> {
        self.driver_options
            .get(KEY_PREDEFINED)
            .map(|v| parse_bool(KEY_PREDEFINED, v))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Whether the network may have the embedded DNS: [`KEY_EMBEDDED_DNS`] as given, true when
    /// absent.
    pub fn embedded_dns(&self) -> Result<bool, CoreError> {
        self.driver_options
            .get(KEY_EMBEDDED_DNS)
            .map(|v| parse_bool(KEY_EMBEDDED_DNS, v))
            .transpose()
            .map(|on| on.unwrap_or(true))
    }

    /// The MTU asked for with [`KEY_DRIVER_MTU`], checked against the network's families.
    pub fn mtu(&self) -> Result<Option<u32>, CoreError> {
        self.driver_options
            .get(KEY_DRIVER_MTU)
            .map(|v| check_mtu(v, self.enable_ipv6))
            .transpose()
    }

    /// The driver's own options: [`NetworkOptions::driver_options`] without the generic labels
    /// core owns. What the driver parses.
    pub fn driver_keys(&self) -> DriverOptions {
        self.driver_options
            .iter()
            .filter(|(k, _)| !GENERIC_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The options as a Docker client gives them (`Options` of `network inspect`): the driver
    /// options as given, with cnm's own keys core consumed.
    pub fn as_docker_options(&self) -> BTreeMap<String, String> {
        let mut o = self.driver_options.clone();
        o.remove(KEY_PREDEFINED);
        if self.allow_host_overlap {
            o.insert(KEY_ALLOW_HOST_OVERLAP.to_owned(), "true".to_owned());
        }
        o
    }
}

/// Checks the value of [`KEY_DRIVER_MTU`]: a number from [`MIN_MTU_V4`] (or [`MIN_MTU_V6`] on
/// a network with IPv6, whose links would otherwise lose IPv6, and with it their gateway
/// address) to [`MAX_MTU`].
pub fn check_mtu(value: &str, ipv6: bool) -> Result<u32, CoreError> {
    let bad = |reason: String| CoreError::invalid(KEY_DRIVER_MTU, value, reason);
    let mtu: u32 = value
        .parse()
        .map_err(|_| bad(format!("not a number from {MIN_MTU_V4} to {MAX_MTU}")))?;
    if !(MIN_MTU_V4..=MAX_MTU).contains(&mtu) {
        return Err(bad(format!(
            "an MTU must be from {MIN_MTU_V4} (the IPv4 minimum, RFC 791) to {MAX_MTU}"
        )));
    }
    if ipv6 && mtu < MIN_MTU_V6 {
        return Err(bad(format!(
            "a network with IPv6 needs an MTU of at least {MIN_MTU_V6} (RFC 8200); \
             the kernel turns IPv6 off on a smaller link"
        )));
    }
    Ok(mtu)
}

/// One entry of Docker's `IPAM.Config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RawIpamConfig {
    /// `10.1.0.0/24`.
    pub subnet: String,
    /// `10.1.0.128/25` (optional).
    #[serde(rename = "IPRange")]
    pub ip_range: String,
    /// `10.1.0.1` (optional).
    pub gateway: String,
    /// Name → address, reserved for the driver.
    pub auxiliary_addresses: BTreeMap<String, String>,
}

/// Docker's `IPAM` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RawIpam {
    /// The IPAM driver (`default` or empty for the built-in).
    pub driver: String,
    /// The pools.
    pub config: Vec<RawIpamConfig>,
    /// IPAM driver options (none are understood by the built-in IPAM: kept, shown, reported).
    pub options: BTreeMap<String, String>,
}

/// Network options as Docker's `POST /networks/create` body carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RawNetworkOptions {
    /// Pools and the IPAM driver.
    #[serde(rename = "IPAM")]
    pub ipam: RawIpam,
    /// Generic and driver options (`com.docker.network.*` and the driver's own keys).
    pub options: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Internal network.
    pub internal: Option<bool>,
    /// IPv6 on.
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: Option<bool>,
    /// IPv4 on (false for IPv6-only).
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: Option<bool>,
}

/// A boolean that may come both as a field and as an option key; they must agree.
fn merge_flag(
    field: &str,
    from_field: Option<bool>,
    key: &str,
    options: &mut BTreeMap<String, String>,
    default: bool,
) -> Result<bool, CoreError> {
    let from_key = options
        .remove(key)
        .map(|v| parse_bool(key, &v))
        .transpose()?;
    match (from_field, from_key) {
        (Some(a), Some(b)) if a != b => Err(CoreError::invalid(
            field,
            a,
            format!("it contradicts option {key}={b}"),
        )),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Ok(default),
    }
}

impl TryFrom<RawNetworkOptions> for NetworkOptions {
    type Error = CoreError;

    fn try_from(raw: RawNetworkOptions) -> Result<Self, CoreError> {
        let mut options = raw.options;
        let enable_ipv6 = merge_flag(
            "EnableIPv6",
            raw.enable_ipv6,
            KEY_ENABLE_IPV6,
            &mut options,
            false,
        )?;
        let enable_ipv4 = merge_flag(
            "EnableIPv4",
            raw.enable_ipv4,
            KEY_ENABLE_IPV4,
            &mut options,
            true,
        )?;
        let internal = merge_flag("Internal", raw.internal, KEY_INTERNAL, &mut options, false)?;
        let allow_host_overlap = options
            .remove(KEY_ALLOW_HOST_OVERLAP)
            .map(|v| parse_bool(KEY_ALLOW_HOST_OVERLAP, &v))
            .transpose()?
            .unwrap_or(false);
        // Every other key is the driver's (it checks the values of the keys it knows, and
        // refuses or keeps the others, naming them) or a generic label core owns (checked by
        // `validate`).
        let driver_options = options;
        let ipam_options = (!raw.ipam.options.is_empty()).then_some(raw.ipam.options);
        let mut pools = Vec::new();
        for config in raw.ipam.config {
            pools.push(pool_from_raw(config)?);
        }
        let ipam_driver = match raw.ipam.driver.as_str() {
            "" => None,
            name => Some(name.to_owned()),
        };
        let typed = NetworkOptions {
            pools,
            enable_ipv4,
            enable_ipv6,
            internal,
            labels: raw.labels,
            driver_options,
            ipam_driver,
            allow_host_overlap,
            attachable: false,
            ipam_options,
        };
        typed.validate()?;
        Ok(typed)
    }
}

fn pool_from_raw(raw: RawIpamConfig) -> Result<PoolConfig, CoreError> {
    if raw.subnet.is_empty() {
        let what = [("ip-range", &raw.ip_range), ("gateway", &raw.gateway)]
            .into_iter()
            .find(|(_, v)| !v.is_empty());
        return match what {
            Some((field, value)) => Err(CoreError::invalid(field, value, "it needs a subnet")),
            None => Err(CoreError::invalid(
                "subnet",
                "",
                "an IPAM config entry needs a subnet",
            )),
        };
    }
    let subnet = parse_subnet("subnet", &raw.subnet)?;
    // Before the range, gateway and aux addresses: those lie inside it, so a reserved subnet
    // is what the user must hear about.
    if let Some(reason) = refusal(subnet) {
        return Err(CoreError::invalid("subnet", &raw.subnet, reason));
    }
    let mut pool = PoolConfig::new(subnet);
    if !raw.ip_range.is_empty() {
        let range = parse_subnet("ip-range", &raw.ip_range)?;
        check_family("ip-range", &raw.ip_range, subnet, range.addr())?;
        pool = pool.with_ip_range(range)?;
    }
    if !raw.gateway.is_empty() {
        let gateway = parse_ip("gateway", &raw.gateway)?;
        check_family("gateway", &raw.gateway, subnet, gateway)?;
        pool = pool.with_gateway(gateway)?;
    }
    for (name, value) in raw.auxiliary_addresses {
        let field = format!("auxiliary address {name}");
        let ip = parse_ip(&field, &value)?;
        check_family(&field, &value, subnet, ip)?;
        pool = pool.with_aux_address(name, ip)?;
    }
    Ok(pool)
}

fn check_family(field: &str, value: &str, subnet: IpNet, ip: IpAddr) -> Result<(), CoreError> {
    if matches!(subnet, IpNet::V6(_)) != ip.is_ipv6() {
        return Err(CoreError::invalid(
            field,
            value,
            format!("it is not of the family of subnet {subnet}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::ErrorKind;

    fn raw(subnet: &str, range: &str, gateway: &str) -> RawNetworkOptions {
        RawNetworkOptions {
            ipam: RawIpam {
                config: vec![RawIpamConfig {
                    subnet: subnet.into(),
                    ip_range: range.into(),
                    gateway: gateway.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn refused(raw: RawNetworkOptions, needles: &[&str]) {
        let e = NetworkOptions::try_from(raw).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        for n in needles {
            assert!(e.to_string().contains(n), "{e:?} lacks {n}");
        }
    }

    #[test]
    fn docker_json_parses() {
        let json = r#"{"IPAM":{"Driver":"default","Config":[{"Subnet":"10.7.0.0/16","IPRange":"10.7.1.0/24",
            "Gateway":"10.7.0.1","AuxiliaryAddresses":{"router":"10.7.0.2"}},{"Subnet":"fd00:7::/64"}]},
            "Options":{"com.docker.network.bridge.name":"br7","com.docker.network.driver.mtu":"1400",
            "com.docker.network.enable_ipv6":"true"},"Labels":{"a":"b"},"Internal":true}"#;
        let raw: RawNetworkOptions = serde_json::from_str(json).unwrap();
        let opts = NetworkOptions::try_from(raw).unwrap();
        assert!(opts.enable_ipv6 && opts.enable_ipv4 && opts.internal);
        assert_eq!(opts.pools.len(), 2);
        let p = &opts.pools[0];
        assert_eq!(p.subnet().to_string(), "10.7.0.0/16");
        assert_eq!(p.ip_range().unwrap().to_string(), "10.7.1.0/24");
        assert_eq!(p.gateway().unwrap().to_string(), "10.7.0.1");
        assert_eq!(p.aux_addresses()["router"].to_string(), "10.7.0.2");
        assert!(opts.pools[1].is_ipv6());
        assert_eq!(
            opts.driver_options.len(),
            2,
            "driver keys are passed on, core keys consumed"
        );
        assert_eq!(opts.labels["a"], "b");
        assert_eq!(opts.ipam_driver.as_deref(), Some("default"));
    }

    #[test]
    fn docker_keys_mean_what_they_say() {
        let mut r = RawNetworkOptions::default();
        r.options.insert(KEY_INTERNAL.into(), "1".into());
        r.options.insert(KEY_ENABLE_IPV4.into(), "false".into());
        r.options.insert(KEY_ENABLE_IPV6.into(), "True".into());
        let o = NetworkOptions::try_from(r).unwrap();
        assert!(o.internal && !o.enable_ipv4 && o.enable_ipv6 && o.driver_options.is_empty());
    }

    #[test]
    fn bad_inputs_name_field_and_value() {
        refused(raw("10.1.0.0/33", "", ""), &["subnet", "10.1.0.0/33"]);
        refused(raw("banana", "", ""), &["subnet", "banana"]);
        refused(
            raw("10.1.0.0/24", "", "10.2.0.1"),
            &["gateway", "10.2.0.1", "10.1.0.0/24"],
        );
        refused(
            raw("10.1.0.0/24", "10.1.1.0/25", ""),
            &["ip-range", "10.1.1.0/25"],
        );
        refused(raw("10.1.0.0/24", "", "fd00::1"), &["gateway", "fd00::1"]);
        refused(
            raw("10.1.0.0/24", "", "10.1.0.300"),
            &["gateway", "10.1.0.300"],
        );
        refused(raw("", "", "10.1.0.1"), &["gateway", "10.1.0.1", "subnet"]);
        refused(
            raw("fd00::/64", "", ""),
            &["subnet", "fd00::/64", "enable_ipv6"],
        );

        let mut r = raw("10.1.0.0/24", "", "");
        r.ipam.config[0]
            .auxiliary_addresses
            .insert("x".into(), "10.9.0.1".into());
        refused(r, &["auxiliary address x", "10.9.0.1"]);

        let mut r = raw("10.1.0.0/16", "", "");
        r.ipam.config.push(RawIpamConfig {
            subnet: "10.1.5.0/24".into(),
            ..Default::default()
        });
        refused(r, &["10.1.5.0/24", "overlaps", "10.1.0.0/16"]);

        // A key core does not own is the driver's to accept or refuse (when the network is
        // created, before anything else): core names no driver's keys.
        let mut r = RawNetworkOptions::default();
        r.options
            .insert("com.docker.network.frobnicate".into(), "7".into());
        let o = NetworkOptions::try_from(r).unwrap();
        assert_eq!(o.driver_keys()["com.docker.network.frobnicate"], "7");

        let mut r = RawNetworkOptions::default();
        r.options.insert(KEY_ENABLE_IPV6.into(), "maybe".into());
        refused(r, &[KEY_ENABLE_IPV6, "maybe"]);

        let mut r = RawNetworkOptions {
            enable_ipv6: Some(true),
            ..Default::default()
        };
        r.options.insert(KEY_ENABLE_IPV6.into(), "false".into());
        refused(r, &["EnableIPv6", KEY_ENABLE_IPV6]);

        let r = RawNetworkOptions {
            enable_ipv4: Some(false),
            ..Default::default()
        };
        refused(r, &["enable_ipv4"]);
    }

    #[test]
    fn keys_core_does_not_know_go_to_the_driver_and_ipam_options_are_kept() {
        let mut r = RawNetworkOptions::default();
        r.options
            .insert("com.docker.network.frobnicate".into(), "7".into());
        r.options.insert("foo".into(), "bar".into());
        r.ipam.options.insert("x".into(), "y".into());
        let o = NetworkOptions::try_from(r).unwrap();
        assert_eq!(o.driver_options.len(), 2);
        assert_eq!(o.driver_options["com.docker.network.frobnicate"], "7");
        assert_eq!(
            o.ipam_options,
            Some(BTreeMap::from([("x".into(), "y".into())]))
        );
        let o = NetworkOptions::try_from(RawNetworkOptions::default()).unwrap();
        assert_eq!(o.ipam_options, None);
    }

    #[test]
    fn reserved_subnets_are_named_before_what_lies_in_them() {
        // The subnet is what is wrong, whatever the range, gateway or aux address say.
        refused(
            raw("127.0.0.0/8", "127.0.1.0/24", "127.0.0.1"),
            &["subnet \"127.0.0.0/8\"", "loopback"],
        );
        refused(
            raw("169.254.0.0/16", "", "10.0.0.1"),
            &["subnet \"169.254.0.0/16\"", "link-local"],
        );
        let mut r = raw("224.0.0.0/24", "", "");
        r.ipam.config[0]
            .auxiliary_addresses
            .insert("x".into(), "224.0.0.5".into());
        refused(r, &["subnet \"224.0.0.0/24\"", "multicast"]);
        // IPv6 ranges are named even when IPv6 is off (the subnet is the first thing wrong).
        for (subnet, needle) in [
            ("::/0", "wider than /16"),
            ("::1/128", "loopback"),
            ("ff00::/8", "multicast"),
            ("ff02::/16", "multicast"),
            ("fe80::/64", "link-local"),
            ("::ffff:0:0/96", "IPv4-mapped"),
        ] {
            let mut r = raw(subnet, "", "");
            r.enable_ipv6 = Some(true);
            refused(r, &[subnet, needle]);
            refused(raw(subnet, "", ""), &[subnet, needle]);
        }
        refused(raw("0.0.0.0/0", "", ""), &["0.0.0.0/0", "wider than /8"]);
        // A typed pool is checked by validate().
        let e = NetworkOptions::default()
            .subnet("255.255.255.255/32".parse().unwrap())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("limited broadcast"), "{e}");
        // A fine subnet with a range, gateway and aux address inside it passes.
        let mut r = raw("10.7.0.0/16", "10.7.1.0/24", "10.7.0.1");
        r.ipam.config[0]
            .auxiliary_addresses
            .insert("x".into(), "10.7.0.2".into());
        assert!(NetworkOptions::try_from(r).is_ok());
    }

    #[test]
    fn host_overlap_opt_in_is_a_core_key() {
        let mut r = RawNetworkOptions::default();
        r.options
            .insert(KEY_ALLOW_HOST_OVERLAP.into(), "true".into());
        r.options
            .insert("com.docker.network.bridge.name".into(), "br9".into());
        let o = NetworkOptions::try_from(r).unwrap();
        assert!(o.allow_host_overlap);
        assert!(
            !o.driver_options.contains_key(KEY_ALLOW_HOST_OVERLAP),
            "consumed by core, not passed to the driver"
        );
        assert!(
            !NetworkOptions::try_from(RawNetworkOptions::default())
                .unwrap()
                .allow_host_overlap
        );
        let mut r = RawNetworkOptions::default();
        r.options
            .insert(KEY_ALLOW_HOST_OVERLAP.into(), "yes".into());
        refused(r, &[KEY_ALLOW_HOST_OVERLAP, "yes"]);
        // A driver's key in cnm's namespace reaches the driver.
        let mut r = RawNetworkOptions::default();
        r.options.insert(
            "com.cnm.network.bridge.internal_host_access".into(),
            "true".into(),
        );
        let o = NetworkOptions::try_from(r).unwrap();
        assert!(
            o.driver_keys()
                .contains_key("com.cnm.network.bridge.internal_host_access")
        );
    }

    #[test]
    fn mtu_fits_the_networks_families() {
        let mtu = |v: &str, ipv6: bool| {
            let mut r = RawNetworkOptions::default();
            r.options.insert(KEY_DRIVER_MTU.into(), v.into());
            if ipv6 {
                r.enable_ipv6 = Some(true);
            }
            NetworkOptions::try_from(r)
        };
        for (v, ipv6, needle) in [
            ("67", false, "from 68"),
            ("0", false, "from 68"),
            ("65536", false, "65535"),
            ("big", false, "not a number"),
            ("-1", false, "not a number"),
            ("1279", true, "at least 1280"),
            ("68", true, "at least 1280"),
        ] {
            let e = mtu(v, ipv6).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            let text = e.to_string();
            assert!(
                text.contains(KEY_DRIVER_MTU)
                    && text.contains(&format!("{v:?}"))
                    && text.contains(needle),
                "{v}: {text}"
            );
        }
        for (v, ipv6) in [
            ("68", false),
            ("1279", false),
            ("1280", true),
            ("65535", true),
        ] {
            let o = mtu(v, ipv6).unwrap();
            assert_eq!(o.driver_options[KEY_DRIVER_MTU], v, "kept as given");
            assert_eq!(o.mtu().unwrap(), Some(v.parse().unwrap()), "parsed by core");
            assert!(
                !o.driver_keys().contains_key(KEY_DRIVER_MTU),
                "not the driver's to parse"
            );
        }
    }

    #[test]
    fn typed_builders_check_containment() {
        let p = PoolConfig::new("10.1.0.9/24".parse().unwrap());
        assert_eq!(p.subnet().to_string(), "10.1.0.0/24");
        assert!(p.clone().with_gateway("10.1.0.1".parse().unwrap()).is_ok());
        let e = p
            .clone()
            .with_gateway("10.1.1.1".parse().unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("10.1.1.1"));
        assert!(p.with_ip_range("10.0.0.0/8".parse().unwrap()).is_err());
    }

    #[test]
    fn network_dns_servers_parse_with_or_without_port_and_bad_ones_are_named() {
        let with = |v: &str| {
            let mut r = RawNetworkOptions::default();
            r.options.insert(KEY_DNS_SERVERS.into(), v.into());
            r
        };
        let o = NetworkOptions::try_from(with("192.0.2.53, 192.0.2.54:5353,[2001:db8::53]:53"))
            .unwrap();
        let got: Vec<String> = o
            .dns_servers()
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            ["192.0.2.53:53", "192.0.2.54:5353", "[2001:db8::53]:53"]
        );
        assert!(
            o.driver_keys().is_empty(),
            "core's key never reaches the driver"
        );
        assert!(NetworkOptions::default().dns_servers().unwrap().is_empty());
        refused(with("192.0.2.53,banana"), &[KEY_DNS_SERVERS, "banana"]);
        refused(with(""), &[KEY_DNS_SERVERS]);
        refused(with("0.0.0.0"), &[KEY_DNS_SERVERS, "0.0.0.0"]);
        refused(with("192.0.2.1:0"), &[KEY_DNS_SERVERS]);
        let many = (1..=9)
            .map(|i| format!("192.0.2.{i}"))
            .collect::<Vec<_>>()
            .join(",");
        refused(with(&many), &["more than 8"]);
    }
}
