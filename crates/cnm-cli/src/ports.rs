//! `-p` specs: checked here so a typo fails before anything is created, then passed to the daemon
//! unchanged (the daemon owns their meaning).

use std::net::IpAddr;

/// Checks `[HOST_IP:][HOST_PORT:]CTR_PORT[/PROTO]` (ports may be ranges `A-B`, an IPv6 host IP
/// goes in brackets) and returns the spec unchanged.
pub fn check(spec: &str) -> Result<&str, String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid port spec {spec:?}: {why} (expected [HOST_IP:][HOST_PORT:]CTR_PORT[/PROTO], e.g. 8080:80 or 127.0.0.1:8080:80/tcp)"
        ))
    };
    let (addr_ports, proto) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (rest, Some(proto)),
        None => (spec, None),
    };
    if let Some(p) = proto
        && !matches!(p, "tcp" | "udp" | "sctp")
    {
        return bad("protocol must be tcp, udp or sctp");
    }
    let (ip, ports) = if let Some(rest) = addr_ports.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return bad("missing ']' after the IPv6 address");
        };
        let Some(ports) = after.strip_prefix(':') else {
            return bad("expected ':' after the IPv6 address");
        };
        (Some(ip), ports)
    } else {
        let parts: Vec<&str> = addr_ports.split(':').collect();
        match parts.len() {
            1 | 2 => (None, addr_ports),
            3 => (Some(parts[0]), &addr_ports[parts[0].len() + 1..]),
            _ => return bad("too many ':' (put an IPv6 host address in brackets)"),
        }
    };
    if let Some(ip) = ip
        && !ip.is_empty()
        && ip.parse::<IpAddr>().is_err()
    {
        return bad("host IP is not an IP address");
    }
    let (host_port, ctr_port) = match ports.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, ports),
    };
    if !valid_range(ctr_port) {
        return bad("container port must be a port 1-65535 or a range A-B");
    }
    if let Some(h) = host_port
        && !h.is_empty()
        && !valid_range(h)
    {
        return bad("host port must be a port 1-65535 or a range A-B");
    }
    Ok(spec)
}

fn valid_range(s: &str) -> bool {
    let port = |p: &str| p.parse::<u16>().is_ok_and(|n| n > 0);
    match s.split_once('-') {
        Some((a, b)) => port(a) && port(b) && a.parse::<u16>().ok() <= b.parse::<u16>().ok(),
        None => port(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_specs_pass_through_unchanged() {
        for s in [
            "80",
            "8080:80",
            "8080:80/tcp",
            "53:53/udp",
            "127.0.0.1:8080:80",
            "127.0.0.1::80",
            "[::1]:8080:80/tcp",
            "[::]::80",
            "8000-8010:8000-8010",
            "9000-9001/udp",
        ] {
            assert_eq!(check(s), Ok(s), "{s}");
        }
    }

    #[test]
    fn typos_are_rejected_with_the_reason() {
        for (s, why) in [
            ("", "container port"),
            ("0", "container port"),
            ("65536", "container port"),
            ("80/icmp", "protocol"),
            ("abc:80", "host port"),
            ("1.2.3:80:80", "host IP"),
            ("::1:80:80", "brackets"),
            ("[::1:80:80", "']'"),
            ("90-80", "container port"),
        ] {
            let e = check(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
