use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use cnm_types::ErrorKind;

use super::*;
use crate::config::PoolSpec;
use crate::error::Reservation;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ipam() -> Ipam {
    Ipam::new(IpamConfig::docker_defaults("test-host"))
}

fn pool_of(ipam: &Ipam, subnet: &str) -> Pool {
    ipam.request_pool(&PoolRequest::with_subnet(net(subnet)))
        .unwrap()
}

fn any(ipam: &Ipam, pool: &Pool) -> String {
    ipam.request_address(&pool.id, AddressRequest::Any)
        .unwrap()
        .to_string()
}

#[test]
fn gateway_defaults_to_the_first_usable_address() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "10.1.0.0/16");
    assert_eq!(pool.gateway, ip("10.1.0.1"));
    let gw = ipam
        .request_address(&pool.id, AddressRequest::Gateway)
        .unwrap();
    assert_eq!(gw, net("10.1.0.1/16"));
    assert_eq!(any(&ipam, &pool), "10.1.0.2/16");
    let err = ipam
        .request_address(&pool.id, AddressRequest::Gateway)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.1.0.1 is already allocated in pool 10.1.0.0/16"
    );
    assert_eq!(err.kind(), ErrorKind::Conflict);
}

#[test]
fn requested_gateway_is_used_and_any_fills_around_it() {
    let ipam = ipam();
    let mut req = PoolRequest::with_subnet(net("10.1.0.0/24"));
    req.gateway = Some(ip("10.1.0.254"));
    let pool = ipam.request_pool(&req).unwrap();
    assert_eq!(pool.gateway, ip("10.1.0.254"));
    assert_eq!(any(&ipam, &pool), "10.1.0.1/24");
    let gw = ipam
        .request_address(&pool.id, AddressRequest::Gateway)
        .unwrap();
    assert_eq!(gw, net("10.1.0.254/24"));
}

#[test]
fn any_returns_the_lowest_free_address_and_reuses_released_ones() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "10.1.0.0/24");
    for expected in ["10.1.0.1/24", "10.1.0.2/24", "10.1.0.3/24", "10.1.0.4/24"] {
        assert_eq!(any(&ipam, &pool), expected);
    }
    ipam.release_address(&pool.id, ip("10.1.0.2")).unwrap();
    ipam.release_address(&pool.id, ip("10.1.0.3")).unwrap();
    assert_eq!(any(&ipam, &pool), "10.1.0.2/24");
    assert_eq!(any(&ipam, &pool), "10.1.0.3/24");
    assert_eq!(any(&ipam, &pool), "10.1.0.5/24");
}

#[test]
fn any_stays_inside_the_ip_range_and_specific_may_leave_it() {
    let ipam = ipam();
    let mut req = PoolRequest::with_subnet(net("10.1.0.0/16"));
    req.ip_range = Some(net("10.1.4.0/30"));
    let pool = ipam.request_pool(&req).unwrap();
    assert_eq!(pool.id.to_string(), "local/10.1.0.0/16/10.1.4.0/30");
    assert_eq!(
        pool.gateway,
        ip("10.1.0.1"),
        "gateway is the first usable address of the subnet"
    );
    // The range's own all-zero and all-one addresses are ordinary hosts of the /16.
    let got: Vec<String> = (0..4).map(|_| any(&ipam, &pool)).collect();
    assert_eq!(
        got,
        ["10.1.4.0/16", "10.1.4.1/16", "10.1.4.2/16", "10.1.4.3/16"]
    );
    let err = ipam
        .request_address(&pool.id, AddressRequest::Any)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free address in pool 10.1.0.0/16 (ip-range 10.1.4.0/30)"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let specific = ipam
        .request_address(&pool.id, AddressRequest::Specific(ip("10.1.9.9")))
        .unwrap();
    assert_eq!(specific, net("10.1.9.9/16"));
}

#[test]
fn specific_addresses_in_use_or_outside_are_refused() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "10.1.0.0/16");
    let five = AddressRequest::Specific(ip("10.1.0.5"));
    assert_eq!(
        ipam.request_address(&pool.id, five).unwrap(),
        net("10.1.0.5/16")
    );
    let err = ipam.request_address(&pool.id, five).unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.1.0.5 is already allocated in pool 10.1.0.0/16"
    );
    let err = ipam
        .request_address(&pool.id, AddressRequest::Specific(ip("10.2.0.5")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.2.0.5 is outside pool 10.1.0.0/16"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = ipam
        .request_address(&pool.id, AddressRequest::Specific(ip("fd00::5")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "address fd00::5 is outside pool 10.1.0.0/16"
    );
    assert_eq!(
        ipam.usage(&pool.id).unwrap().allocated,
        1,
        "failed requests allocate nothing"
    );
}

#[test]
fn network_and_broadcast_are_never_handed_out() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "10.1.0.0/24");
    for (addr, what) in [
        ("10.1.0.0", "network address"),
        ("10.1.0.255", "broadcast address"),
    ] {
        let err = ipam
            .request_address(&pool.id, AddressRequest::Specific(ip(addr)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("address {addr} is the {what} of pool 10.1.0.0/24 and is never handed out")
        );
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}

#[test]
fn a_slash_30_is_exhausted_after_two_addresses() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "10.1.0.0/30");
    assert_eq!(any(&ipam, &pool), "10.1.0.1/30");
    assert_eq!(any(&ipam, &pool), "10.1.0.2/30");
    let err = ipam
        .request_address(&pool.id, AddressRequest::Any)
        .unwrap_err();
    assert_eq!(err.to_string(), "no free address in pool 10.1.0.0/30");
    assert!(matches!(err, IpamError::PoolExhausted { .. }));
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    ipam.release_address(&pool.id, ip("10.1.0.1")).unwrap();
    assert_eq!(any(&ipam, &pool), "10.1.0.1/30");
}

#[test]
fn slash_31_and_slash_32_use_every_address() {
    let ipam = ipam();
    let p31 = pool_of(&ipam, "10.1.0.0/31");
    assert_eq!(p31.gateway, ip("10.1.0.0"));
    assert_eq!(any(&ipam, &p31), "10.1.0.0/31");
    assert_eq!(any(&ipam, &p31), "10.1.0.1/31");
    assert!(ipam.request_address(&p31.id, AddressRequest::Any).is_err());
    let p32 = pool_of(&ipam, "10.2.0.7/32");
    assert_eq!(
        ipam.request_address(&p32.id, AddressRequest::Gateway)
            .unwrap(),
        net("10.2.0.7/32")
    );
    assert!(ipam.request_address(&p32.id, AddressRequest::Any).is_err());
    let p127 = pool_of(&ipam, "fd00::/127");
    assert_eq!(any(&ipam, &p127), "fd00::/127");
}

#[test]
fn v6_subnet_router_anycast_is_reserved_and_the_last_address_is_usable() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "fd00:1::/64");
    assert_eq!(pool.gateway, ip("fd00:1::1"));
    let err = ipam
        .request_address(&pool.id, AddressRequest::Specific(ip("fd00:1::")))
        .unwrap_err();
    assert!(matches!(
        err,
        IpamError::AddressReserved {
            reservation: Reservation::SubnetRouterAnycast,
            ..
        }
    ));
    assert_eq!(any(&ipam, &pool), "fd00:1::1/64");
    let last = ip("fd00:1::ffff:ffff:ffff:ffff");
    assert_eq!(
        ipam.request_address(&pool.id, AddressRequest::Specific(last))
            .unwrap(),
        net("fd00:1::ffff:ffff:ffff:ffff/64")
    );
    ipam.release_address(&pool.id, last).unwrap();
}

#[test]
fn v6_any_reaches_the_last_address_of_a_slash_64() {
    let ipam = ipam();
    let mut req = PoolRequest::with_subnet(net("fd00:1::/64"));
    req.ip_range = Some(net("fd00:1::ffff:ffff:ffff:fffc/126"));
    let pool = ipam.request_pool(&req).unwrap();
    let got: Vec<String> = (0..4).map(|_| any(&ipam, &pool)).collect();
    assert_eq!(got.last().unwrap(), "fd00:1::ffff:ffff:ffff:ffff/64");
    assert!(ipam.request_address(&pool.id, AddressRequest::Any).is_err());
}

#[test]
fn aux_addresses_are_reserved() {
    let ipam = ipam();
    let mut req = PoolRequest::with_subnet(net("10.1.0.0/29"));
    req.aux_addresses = vec![ip("10.1.0.2"), ip("10.1.0.3")];
    let pool = ipam.request_pool(&req).unwrap();
    assert_eq!(pool.aux_addresses, [ip("10.1.0.2"), ip("10.1.0.3")]);
    let got: Vec<String> = (0..4).map(|_| any(&ipam, &pool)).collect();
    assert_eq!(
        got,
        ["10.1.0.1/29", "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"]
    );
    assert!(ipam.request_address(&pool.id, AddressRequest::Any).is_err());
    let err = ipam
        .request_address(&pool.id, AddressRequest::Specific(ip("10.1.0.2")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.1.0.2 is the aux address of pool 10.1.0.0/29 and is never handed out"
    );
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        ipam.release_address(&pool.id, ip("10.1.0.3")).is_err(),
        "aux addresses stay reserved"
    );
}

#[test]
fn the_default_gateway_skips_aux_addresses() {
    let ipam = ipam();
    let mut req = PoolRequest::with_subnet(net("10.1.0.0/24"));
    req.aux_addresses = vec![ip("10.1.0.1"), ip("10.1.0.2")];
    let pool = ipam.request_pool(&req).unwrap();
    assert_eq!(pool.gateway, ip("10.1.0.3"));
    let mut only = PoolRequest::with_subnet(net("10.2.0.1/32"));
    only.aux_addresses = vec![ip("10.2.0.1")];
    let err = ipam.request_pool(&only).unwrap_err();
    assert_eq!(
        err.to_string(),
        "gateway 10.2.0.1 is also an aux address of subnet 10.2.0.1/32"
    );
}

#[test]
fn pool_request_validation_names_field_and_value() {
    let ipam = ipam();
    let cases: Vec<(PoolRequest, &str)> = vec![
        (
            PoolRequest {
                ip_range: Some(net("10.9.0.0/24")),
                ..PoolRequest::with_subnet(net("10.1.0.0/16"))
            },
            "ip-range 10.9.0.0/24 is not inside subnet 10.1.0.0/16",
        ),
        (
            PoolRequest {
                gateway: Some(ip("10.9.0.1")),
                ..PoolRequest::with_subnet(net("10.1.0.0/16"))
            },
            "gateway 10.9.0.1 is outside subnet 10.1.0.0/16",
        ),
        (
            PoolRequest {
                gateway: Some(ip("10.1.255.255")),
                ..PoolRequest::with_subnet(net("10.1.0.0/16"))
            },
            "gateway 10.1.255.255 is the broadcast address of subnet 10.1.0.0/16",
        ),
        (
            PoolRequest {
                aux_addresses: vec![ip("10.2.0.1")],
                ..PoolRequest::with_subnet(net("10.1.0.0/16"))
            },
            "aux-address 10.2.0.1 is outside subnet 10.1.0.0/16",
        ),
        (
            PoolRequest {
                gateway: Some(ip("10.1.0.9")),
                aux_addresses: vec![ip("10.1.0.9")],
                ..PoolRequest::with_subnet(net("10.1.0.0/16"))
            },
            "gateway 10.1.0.9 is also an aux address of subnet 10.1.0.0/16",
        ),
        (
            PoolRequest::with_subnet(net("10.1.2.3/16")),
            "invalid subnet 10.1.2.3/16: host bits are set, did you mean 10.1.0.0/16?",
        ),
        (
            PoolRequest {
                family: Family::V6,
                ..PoolRequest::with_subnet(net("10.1.0.0/16"))
            },
            "subnet 10.1.0.0/16 is not IPv6",
        ),
        (
            PoolRequest {
                ip_range: Some(net("10.1.0.0/24")),
                ..PoolRequest::new(Family::V4)
            },
            "ip-range 10.1.0.0/24 needs a subnet",
        ),
    ];
    for (req, message) in cases {
        let err = ipam.request_pool(&req).unwrap_err();
        assert_eq!(err.to_string(), message);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{message}");
    }
    assert!(
        ipam.pools().is_empty(),
        "rejected requests allocate nothing"
    );
}

#[test]
fn parse_helpers_name_the_value() {
    let err = crate::parse_cidr("subnet", "10.0.0.0/33").unwrap_err();
    assert_eq!(err.to_string(), "invalid subnet \"10.0.0.0/33\"");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(
        crate::parse_cidr("subnet", "10.1.2.3/16").unwrap(),
        net("10.1.2.3/16")
    );
    assert!(crate::parse_subnet("subnet", "10.1.2.3/16").is_err());
    assert_eq!(
        crate::parse_subnet("ip-range", " fd00::/64 ").unwrap(),
        net("fd00::/64")
    );
}

#[test]
fn overlapping_subnets_are_refused_naming_both() {
    let ipam = ipam();
    pool_of(&ipam, "10.0.0.0/8");
    for (subnet, message) in [
        (
            "10.1.0.0/16",
            "subnet 10.1.0.0/16 overlaps existing pool 10.0.0.0/8",
        ),
        (
            "0.0.0.0/0",
            "subnet 0.0.0.0/0 overlaps existing pool 10.0.0.0/8",
        ),
        (
            "10.255.255.255/32",
            "subnet 10.255.255.255/32 overlaps existing pool 10.0.0.0/8",
        ),
    ] {
        let err = ipam
            .request_pool(&PoolRequest::with_subnet(net(subnet)))
            .unwrap_err();
        assert_eq!(err.to_string(), message);
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }
    pool_of(&ipam, "11.0.0.0/8");
    pool_of(&ipam, "9.255.255.0/24");
    assert_eq!(ipam.pools().len(), 3);
}

#[test]
fn default_pools_follow_docker_order_and_skip_used_and_excluded_ones() {
    let ipam = ipam();
    let first = ipam.request_pool(&PoolRequest::new(Family::V4)).unwrap();
    assert_eq!(first.subnet, net("172.17.0.0/16"));
    pool_of(&ipam, "172.18.128.0/24");
    let mut req = PoolRequest::new(Family::V4);
    req.exclude = vec![net("172.19.0.5/32"), net("fd00::/8"), net("172.20.0.0/15")];
    let next = ipam.request_pool(&req).unwrap();
    assert_eq!(
        next.subnet,
        net("172.22.0.0/16"),
        "172.18 (in use), 172.19, 172.20-21 (excluded) skipped"
    );
    let plain = ipam.request_pool(&PoolRequest::new(Family::V4)).unwrap();
    assert_eq!(
        plain.subnet,
        net("172.19.0.0/16"),
        "exclusions apply to one request only"
    );
}

#[test]
fn default_enumeration_reaches_192_168_slash_20s_and_then_runs_out() {
    let ipam = ipam();
    let subnets: Vec<IpNet> = (0..15)
        .map(|_| {
            ipam.request_pool(&PoolRequest::new(Family::V4))
                .unwrap()
                .subnet
        })
        .collect();
    assert_eq!(subnets.last(), Some(&net("172.31.0.0/16")));
    let next = ipam.request_pool(&PoolRequest::new(Family::V4)).unwrap();
    assert_eq!(next.subnet, net("192.168.0.0/20"));
    let mut req = PoolRequest::new(Family::V4);
    req.exclude = vec![net("192.168.0.0/17")];
    assert_eq!(
        ipam.request_pool(&req).unwrap().subnet,
        net("192.168.128.0/20")
    );
    // Exclude everything: nothing left.
    req.exclude = vec![net("0.0.0.0/0")];
    let err = ipam.request_pool(&req).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        err.to_string()
            .starts_with("no default pool available for IPv4"),
        "{err}"
    );
}

#[test]
fn v6_default_pools_come_from_the_host_ula() {
    let ipam = ipam();
    let ula = IpamConfig::ula_prefix("test-host");
    let a = ipam.request_pool(&PoolRequest::new(Family::V6)).unwrap();
    let b = ipam.request_pool(&PoolRequest::new(Family::V6)).unwrap();
    assert_eq!(a.subnet.prefix_len(), 64);
    assert!(IpNet::V6(ula).contains(&a.subnet));
    assert!(IpNet::V6(ula).contains(&b.subnet));
    assert_ne!(a.subnet, b.subnet);
    assert_eq!(a.gateway, IpAddr::V6((u128::from(ula.addr()) + 1).into()));
}

#[test]
fn skip_ahead_makes_huge_default_splits_cheap() {
    // 2^56 candidate /64s; the first 2^55 + 2^54 + 2^53 + 8 are excluded or in use. Stepping one by one would
    // never finish.
    let config = IpamConfig {
        v4_pools: vec![],
        v6_pools: vec![PoolSpec::new(net("fd00::/8"), 64).unwrap()],
    };
    let ipam = Ipam::new(config);
    let mut req = PoolRequest::new(Family::V6);
    req.exclude = vec![net("fd00::/9"), net("fd80::/10")];
    pool_of(&ipam, "fdc0::/11");
    pool_of(&ipam, "fde0::/61");
    let pool = ipam.request_pool(&req).unwrap();
    assert_eq!(pool.subnet, net("fde0:0:0:8::/64"));
}

#[test]
fn released_pools_are_offered_again() {
    let ipam = ipam();
    let a = ipam.request_pool(&PoolRequest::new(Family::V4)).unwrap();
    ipam.request_address(&a.id, AddressRequest::Any).unwrap();
    ipam.release_pool(&a.id).unwrap();
    let err = ipam
        .request_address(&a.id, AddressRequest::Any)
        .unwrap_err();
    assert_eq!(err.to_string(), "pool local/172.17.0.0/16 not found");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        ipam.release_pool(&a.id).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let again = ipam.request_pool(&PoolRequest::new(Family::V4)).unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(
        any(&ipam, &again),
        "172.17.0.1/16",
        "a new pool starts empty"
    );
}

#[test]
fn releasing_a_free_address_is_not_found() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "10.1.0.0/24");
    let err = ipam.release_address(&pool.id, ip("10.1.0.9")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.1.0.9 is not allocated in pool 10.1.0.0/24"
    );
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn pool_ids_round_trip_through_text_and_serde() {
    for s in [
        "local/172.18.0.0/16",
        "local/10.1.0.0/16/10.1.4.0/24",
        "global/fd00:1::/64/fd00:1::/80",
    ] {
        let id: PoolId = s.parse().unwrap();
        assert_eq!(id.to_string(), s);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<PoolId>(&json).unwrap(), id);
    }
    for bad in [
        "",
        "local",
        "local/10.0.0.0",
        "/10.0.0.0/8",
        "local/10.0.0.0/8/x/y",
        "local/a/b/c/d/e/f",
    ] {
        let err = bad.parse::<PoolId>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn snapshot_restores_exactly_through_json() {
    let ipam = ipam();
    let mut req = PoolRequest::with_subnet(net("10.1.0.0/24"));
    req.ip_range = Some(net("10.1.0.128/25"));
    req.gateway = Some(ip("10.1.0.1"));
    req.aux_addresses = vec![ip("10.1.0.130")];
    let p4 = ipam.request_pool(&req).unwrap();
    let p6 = ipam.request_pool(&PoolRequest::new(Family::V6)).unwrap();
    ipam.request_address(&p4.id, AddressRequest::Gateway)
        .unwrap();
    for _ in 0..5 {
        ipam.request_address(&p4.id, AddressRequest::Any).unwrap();
        ipam.request_address(&p6.id, AddressRequest::Any).unwrap();
    }
    ipam.release_address(&p4.id, ip("10.1.0.131")).unwrap();
    let state = ipam.snapshot();
    let json = serde_json::to_string(&state).unwrap();
    let restored = Ipam::restore(
        IpamConfig::docker_defaults("test-host"),
        serde_json::from_str(&json).unwrap(),
    )
    .unwrap();
    assert_eq!(restored.snapshot(), state);
    assert_eq!(restored.pools(), ipam.pools());
    // Both continue identically.
    for _ in 0..3 {
        assert_eq!(
            restored
                .request_address(&p4.id, AddressRequest::Any)
                .unwrap(),
            ipam.request_address(&p4.id, AddressRequest::Any).unwrap()
        );
    }
    assert_eq!(
        restored
            .request_pool(&PoolRequest::new(Family::V6))
            .unwrap(),
        ipam.request_pool(&PoolRequest::new(Family::V6)).unwrap()
    );
}

#[test]
fn restore_refuses_impossible_states() {
    let ipam = ipam();
    let pool = pool_of(&ipam, "10.1.0.0/24");
    ipam.request_address(&pool.id, AddressRequest::Any).unwrap();
    let good = ipam.snapshot();

    let mut overlapping = good.clone();
    let mut twin = overlapping.pools[0].clone();
    twin.subnet = net("10.1.0.0/25");
    twin.allocated.clear();
    overlapping.pools.push(twin);
    let err = Ipam::restore(IpamConfig::default(), overlapping).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert_eq!(
        err.to_string(),
        "failed to restore IPAM state: pool 10.1.0.0/25 overlaps pool 10.1.0.0/24"
    );

    let mut outside = good.clone();
    outside.pools[0].allocated.push(AddressRun {
        first: ip("10.1.0.200"),
        last: ip("10.1.0.255"),
    });
    let err = Ipam::restore(IpamConfig::default(), outside).unwrap_err();
    assert!(err.to_string().contains("10.1.0.200-10.1.0.255"), "{err}");

    let mut backwards = good;
    backwards.pools[0].allocated.push(AddressRun {
        first: ip("10.1.0.9"),
        last: ip("10.1.0.8"),
    });
    assert_eq!(
        Ipam::restore(IpamConfig::default(), backwards)
            .unwrap_err()
            .kind(),
        ErrorKind::Internal
    );
}

#[test]
fn many_threads_never_share_an_address() {
    const THREADS: usize = 16;
    const OPS: usize = 500;
    let ipam = Arc::new(ipam());
    let shared = pool_of(&ipam, "10.1.0.0/19");
    let live: Mutex<HashSet<IpAddr>> = Mutex::new(HashSet::new());
    let default_pools: Mutex<HashSet<IpNet>> = Mutex::new(HashSet::new());
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (ipam, shared, live, default_pools) = (&ipam, &shared, &live, &default_pools);
            scope.spawn(move || {
                let mut held: Vec<IpAddr> = Vec::new();
                // A small deterministic generator per thread (xorshift).
                let mut state =
                    0x9e37_79b9_u64 ^ (t as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
                for _ in 0..OPS {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    match state % 8 {
                        0..=3 => {
                            let addr = ipam
                                .request_address(&shared.id, AddressRequest::Any)
                                .unwrap()
                                .addr();
                            assert!(live.lock().unwrap().insert(addr), "{addr} handed out twice");
                            held.push(addr);
                        }
                        4 => {
                            let host = u32::try_from(state % 4000 + 1).unwrap();
                            let addr = IpAddr::V4(
                                (u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0)) + host).into(),
                            );
                            match ipam.request_address(&shared.id, AddressRequest::Specific(addr)) {
                                Ok(_) => {
                                    assert!(
                                        live.lock().unwrap().insert(addr),
                                        "{addr} handed out twice"
                                    );
                                    held.push(addr);
                                }
                                Err(err) => assert_eq!(err.kind(), ErrorKind::Conflict),
                            }
                        }
                        5 | 6 if !held.is_empty() => {
                            let addr =
                                held.swap_remove(usize::try_from(state).unwrap() % held.len());
                            assert!(live.lock().unwrap().remove(&addr));
                            ipam.release_address(&shared.id, addr).unwrap();
                        }
                        _ => {
                            let pool = ipam.request_pool(&PoolRequest::new(Family::V6)).unwrap();
                            assert!(
                                default_pools.lock().unwrap().insert(pool.subnet),
                                "{} given twice",
                                pool.subnet
                            );
                            let a = ipam.request_address(&pool.id, AddressRequest::Any).unwrap();
                            assert_eq!(a.addr(), pool.gateway, "a fresh pool starts empty");
                            assert!(default_pools.lock().unwrap().remove(&pool.subnet));
                            ipam.release_pool(&pool.id).unwrap();
                        }
                    }
                }
            });
        }
    });
    let live = live.into_inner().unwrap();
    assert_eq!(
        ipam.usage(&shared.id).unwrap().allocated,
        live.len() as u128
    );
    let state = ipam.snapshot();
    let mut from_state = HashSet::new();
    for run in &state.pools[0].allocated {
        let (first, last) = (
            crate::family::addr_to_u128(run.first),
            crate::family::addr_to_u128(run.last),
        );
        for v in first..=last {
            from_state.insert(crate::family::u128_to_addr(Family::V4, v));
        }
    }
    assert_eq!(from_state, live);
    assert_eq!(ipam.pools().len(), 1, "every default pool was released");
}
