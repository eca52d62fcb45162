//! Subnets a network must not have: ranges the host itself relies on (loopback, link-local,
//! multicast, broadcast, "this network", IPv4-mapped IPv6, …) and subnets so wide that the route
//! a bridge gets for them would capture a large share of the address space.
//!
//! A bridge network puts its gateway address on a bridge in the host, so the host gets an
//! on-link route for the whole subnet: `127.0.0.0/8` there takes the host's own loopback
//! services away from it, `224.0.0.0/4` its multicast, `0.0.0.0/1` most of the Internet. Docker
//! checks nothing but host bits; cnm refuses all of these with the range and the reason.

use ipnet::IpNet;

use crate::CoreError;

/// The widest IPv4 subnet a network may have (`10.0.0.0/8` is the widest private block).
pub const MIN_PREFIX_V4: u8 = 8;
/// The widest IPv6 subnet a network may have (wider ones hold whole registry allocations).
pub const MIN_PREFIX_V6: u8 = 16;

/// The reserved ranges live with the shared vocabulary (published ports refuse them too).
pub use cnm_types::reserved::{RESERVED, ReservedRange};

/// Why `subnet` (canonical, host bits clear) cannot be a network's, as a sentence for
/// [`CoreError::InvalidOption`]; `None` when it can.
pub fn refusal(subnet: IpNet) -> Option<String> {
    // The narrowest range the subnet lies in says the most (`224.0.0.0/4` is multicast before
    // it is too wide); then the width; then the first range it contains.
    if let Some(r) = RESERVED.iter().find(|r| r.net.contains(&subnet)) {
        let relation = if r.net == subnet { "is" } else { "lies in" };
        return Some(format!(
            "it {relation} {}, {}, which no network may use",
            r.net, r.what
        ));
    }
    let (min, family) = match subnet {
        IpNet::V4(_) => (MIN_PREFIX_V4, "IPv4"),
        IpNet::V6(_) => (MIN_PREFIX_V6, "IPv6"),
    };
    if subnet.prefix_len() < min {
        return Some(format!(
            "it is wider than /{min}, the widest {family} subnet a network may have \
             (its route in the host would capture that much of the address space)"
        ));
    }
    RESERVED.iter().find(|r| subnet.contains(&r.net)).map(|r| {
        format!(
            "it contains {}, {}, which no network may use",
            r.net, r.what
        )
    })
}

/// Refuses a subnet [`refusal`] gives a reason for, naming `field` and the subnet.
pub(crate) fn check_subnet(field: &str, subnet: IpNet) -> Result<(), CoreError> {
    match refusal(subnet) {
        Some(reason) => Err(CoreError::invalid(field, subnet, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::ErrorKind;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Each reserved range, a subnet inside it and one containing it are refused, naming the
    /// range; the neighbours on both sides are accepted.
    #[test]
    fn every_reserved_range_is_refused_and_its_neighbours_are_not() {
        let cases: &[(&str, &str, &[&str])] = &[
            // (subnet, the range the message must name, neighbours that are fine)
            ("0.0.0.0/8", "0.0.0.0/8", &["1.0.0.0/8"]),
            ("0.1.2.0/24", "0.0.0.0/8", &[]),
            (
                "127.0.0.0/8",
                "127.0.0.0/8",
                &["126.0.0.0/8", "128.0.0.0/8"],
            ),
            ("127.0.0.1/32", "127.0.0.0/8", &[]),
            ("127.5.0.0/16", "127.0.0.0/8", &[]),
            (
                "169.254.0.0/16",
                "169.254.0.0/16",
                &["169.253.0.0/16", "169.255.0.0/16"],
            ),
            ("169.254.3.0/24", "169.254.0.0/16", &[]),
            ("224.0.0.0/4", "224.0.0.0/4", &["223.255.255.0/24"]),
            ("239.1.0.0/16", "224.0.0.0/4", &[]),
            ("255.255.255.255/32", "255.255.255.255/32", &[]),
            ("240.0.0.0/4", "240.0.0.0/4", &[]),
            ("250.0.0.0/8", "240.0.0.0/4", &[]),
            ("::/128", "::/128", &[]),
            ("::1/128", "::1/128", &["::2:0:0/96"]),
            (
                "::ffff:0:0/96",
                "::ffff:0:0/96",
                &["::fffe:0:0/96", "::1:0:0:0/96"],
            ),
            ("::ffff:10.0.0.0/120", "::ffff:0:0/96", &[]),
            ("::/96", "::/96", &[]),
            ("::a00:0/104", "::/96", &[]),
            ("fe80::/10", "fe80::/10", &["fe7f::/16", "fec0::/16"]),
            ("fe80::/64", "fe80::/10", &[]),
            ("febf:1::/64", "fe80::/10", &[]),
            ("ff00::/8", "ff00::/8", &["fe00::/16"]),
            ("ff02::/16", "ff00::/8", &[]),
            ("96.0.0.0/8", "", &[]),
            // Containing a reserved range is as bad as lying in one.
            ("169.254.0.0/15", "169.254.0.0/16", &[]),
            ("::/64", "::/128", &[]),
        ];
        for (subnet, range, neighbours) in cases {
            let subnet = net(subnet);
            if range.is_empty() {
                assert_eq!(refusal(subnet), None, "{subnet}");
                continue;
            }
            let e = check_subnet("subnet", subnet).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            let text = e.to_string();
            let reason = refusal(subnet).unwrap_or_default();
            assert!(
                text.contains(&format!("subnet \"{subnet}\""))
                    && reason.contains(&net(range).to_string()),
                "{subnet}: {text}"
            );
            for n in *neighbours {
                assert_eq!(refusal(net(n)), None, "{n} is not reserved");
            }
        }
    }

    #[test]
    fn messages_say_how_the_subnet_meets_the_range() {
        let m = |s: &str| refusal(net(s)).unwrap();
        assert!(
            m("127.0.0.0/8").contains("it is 127.0.0.0/8, loopback"),
            "{}",
            m("127.0.0.0/8")
        );
        assert!(m("127.1.0.0/16").contains("it lies in 127.0.0.0/8"));
        assert!(m("169.254.0.0/15").contains("it contains 169.254.0.0/16, link-local"));
        assert!(m("255.255.255.255/32").contains("limited broadcast"));
        assert!(m("::ffff:0:0/96").contains("IPv4-mapped"));
        // A reserved range wider than a network may be is named as what it is.
        assert!(m("224.0.0.0/4").contains("it is 224.0.0.0/4, multicast"));
        assert!(m("ff00::/8").contains("it is ff00::/8, multicast"));
        assert!(m("fe80::/10").contains("link-local"));
    }

    #[test]
    fn too_wide_subnets_are_refused() {
        for s in [
            "0.0.0.0/0",
            "32.0.0.0/3",
            "10.0.0.0/7",
            "::/0",
            "2000::/3",
            "fc00::/7",
            "fd00::/15",
        ] {
            let r = refusal(net(s)).unwrap_or_default();
            assert!(r.contains("wider than"), "{s}: {r}");
        }
        for s in [
            "10.0.0.0/8",
            "fd00::/16",
            "fd00:1::/64",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ] {
            assert_eq!(refusal(net(s)), None, "{s}");
        }
    }
}
