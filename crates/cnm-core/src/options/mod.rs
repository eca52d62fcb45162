//! Typed options for networks, endpoints and joins, parsed once at the boundary.
//!
//! Each kind comes in two forms: a typed one the controller takes ([`NetworkOptions`],
//! [`EndpointOptions`], [`JoinOption`]s) and a raw, serde-friendly one with string fields, as a CLI
//! or Docker's JSON carries them ([`RawNetworkOptions`], [`RawEndpointOptions`],
//! [`RawJoinOptions`]). `TryFrom` turns raw into typed; every refusal names the field and the value.

mod endpoint;
mod join;
mod network;
pub mod reserved;

use std::net::IpAddr;

use ipnet::IpNet;

pub use endpoint::{
    EndpointOptions, ExposedPort, KEY_ENDPOINT_IFNAME, KEY_ENDPOINT_SYSCTLS, RawEndpointIpam,
    RawEndpointOptions, parse_endpoint_sysctls,
};
pub use join::{JoinOption, JoinOptions, RawJoinOptions};
pub use network::{
    KEY_ALLOW_HOST_OVERLAP, KEY_DNS_SERVERS, KEY_DRIVER_MTU, KEY_EMBEDDED_DNS, KEY_PREDEFINED,
    MAX_DNS_SERVERS, MAX_MTU, MIN_MTU_V4, MIN_MTU_V6, NetworkOptions, PoolConfig, RawIpam,
    RawIpamConfig, RawNetworkOptions, check_mtu,
};

use crate::CoreError;

/// Parses a boolean as Go's `strconv.ParseBool` does (Docker's option values are Go booleans).
pub(crate) fn parse_bool(field: &str, value: &str) -> Result<bool, CoreError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(CoreError::invalid(
            field,
            value,
            "not a boolean (expected true or false)",
        )),
    }
}

/// Parses a CIDR whose host bits are zero (`10.1.0.0/24`, not `10.1.0.1/24`).
pub(crate) fn parse_subnet(field: &str, value: &str) -> Result<IpNet, CoreError> {
    let net: IpNet = value
        .parse()
        .map_err(|_| CoreError::invalid(field, value, "not a CIDR (expected e.g. 10.1.0.0/24)"))?;
    if net.trunc() != net {
        return Err(CoreError::invalid(
            field,
            value,
            format!("host bits are set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

/// Parses an IP address.
pub(crate) fn parse_ip(field: &str, value: &str) -> Result<IpAddr, CoreError> {
    value
        .parse()
        .map_err(|_| CoreError::invalid(field, value, "not an IP address"))
}

/// Checks a DNS name (host name, domain, alias): dot-separated labels of letters, digits, `-` and
/// `_`, each 1 to 63 bytes, not starting or ending with `-`, 253 bytes at most.
pub(crate) fn check_dns_name(field: &str, value: &str) -> Result<(), CoreError> {
    let bad = |reason: &str| Err(CoreError::invalid(field, value, reason.to_owned()));
    if value.is_empty() {
        return bad("it is empty");
    }
    if value.len() > 253 {
        return bad("longer than 253 bytes");
    }
    for label in value.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated label must be 1 to 63 bytes");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label must not start or end with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, '-', '_' and '.' are allowed");
        }
    }
    Ok(())
}

/// Test support: a change to default raw options, and the two texts its error must name.
#[cfg(test)]
pub(crate) type RefusedCase<R> = (fn(&mut R), [&'static str; 2]);

/// Test support: each case is the raw options' default with one change; the conversion must
/// refuse every case as invalid input with an error naming both needles (field and value).
#[cfg(test)]
pub(crate) fn assert_each_refused<R, T>(cases: &[RefusedCase<R>])
where
    R: Default,
    T: TryFrom<R, Error = CoreError> + std::fmt::Debug,
{
    for (change, needles) in cases {
        let mut raw = R::default();
        change(&mut raw);
        let e = T::try_from(raw).unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput, "{e}");
        for n in needles {
            assert!(e.to_string().contains(n), "{e} lacks {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_booleans() {
        for t in ["1", "t", "TRUE", "true", "True"] {
            assert!(parse_bool("x", t).unwrap());
        }
        for f in ["0", "f", "FALSE", "false", "False"] {
            assert!(!parse_bool("x", f).unwrap());
        }
        let e = parse_bool("com.docker.network.internal", "yes").unwrap_err();
        assert!(
            e.to_string().contains("com.docker.network.internal")
                && e.to_string().contains("\"yes\"")
        );
    }

    #[test]
    fn subnets_and_names() {
        assert_eq!(
            parse_subnet("subnet", "10.1.0.0/24").unwrap().to_string(),
            "10.1.0.0/24"
        );
        let e = parse_subnet("subnet", "10.1.0.1/24").unwrap_err();
        assert!(e.to_string().contains("10.1.0.0/24"), "{e}");
        let e = parse_subnet("subnet", "10.1.0.0/33").unwrap_err();
        assert!(e.to_string().contains("\"10.1.0.0/33\""), "{e}");
        assert!(check_dns_name("hostname", "web-1.docker.io").is_ok());
        for bad in ["", "-a", "a..b", "a b", &"x".repeat(64)] {
            assert!(check_dns_name("hostname", bad).is_err(), "{bad}");
        }
    }
}
