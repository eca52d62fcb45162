//! Resident memory of the sparse address set: 1,000,000 addresses in an IPv6 /64, allocated
//! sequentially, then fragmented by releasing every other one, then as 1,000,000 random
//! `Specific` addresses (no two adjacent, the worst case: one run each).
//!
//! Run with `cargo run --release -p cnm-ipam --example ipam_memory`.
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use cnm_ipam::{AddressRequest, Ipam, IpamConfig, PoolId, PoolRequest, parse_subnet};

const N: u64 = 1_000_000;

/// VmRSS from /proc/self/status, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn report(label: &str, ipam: &Ipam, id: &PoolId, baseline: u64, started: Instant) {
    let usage = ipam.usage(id).expect("pool exists");
    let rss = rss_kib();
    println!(
        "{label:<44} {:>9} addresses {:>9} runs  VmRSS {:>7} KiB (+{:>7} KiB)  {:>7.1} ms",
        usage.allocated,
        usage.runs,
        rss,
        rss.saturating_sub(baseline),
        started.elapsed().as_secs_f64() * 1e3
    );
}

fn new_pool() -> (Ipam, PoolId) {
    let ipam = Ipam::new(IpamConfig::default());
    let subnet = parse_subnet("subnet", "fd00:1::/64").expect("constant subnet");
    let pool = ipam
        .request_pool(&PoolRequest::with_subnet(subnet))
        .expect("empty IPAM accepts the subnet");
    (ipam, pool.id)
}

fn main() {
    let baseline = rss_kib();
    println!("baseline VmRSS {baseline} KiB");

    let base = u128::from("fd00:1::".parse::<Ipv6Addr>().expect("constant address"));
    let (ipam, id) = new_pool();
    let t = Instant::now();
    for _ in 0..N {
        ipam.request_address(&id, AddressRequest::Any)
            .expect("a /64 has room");
    }
    report("sequential Any x1M", &ipam, &id, baseline, t);

    // Any hands out fd00:1::1, ::2, …; release ::1, ::3, … (no list of addresses kept, so
    // the figures are the IPAM's alone).
    let t = Instant::now();
    for k in 0..u128::from(N / 2) {
        let addr = IpAddr::V6(Ipv6Addr::from(base + 1 + 2 * k));
        ipam.release_address(&id, addr)
            .expect("address was allocated");
    }
    report("every other released (500k runs)", &ipam, &id, baseline, t);
    drop(ipam);

    let before = rss_kib();
    let (ipam, id) = new_pool();
    // splitmix64: a fixed-seed generator, so the run is reproducible.
    let mut state: u64 = 0x5eed;
    let t = Instant::now();
    let mut placed = 0;
    while placed < N {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let addr = IpAddr::V6(Ipv6Addr::from(base | u128::from(z | 1)));
        if ipam
            .request_address(&id, AddressRequest::Specific(addr))
            .is_ok()
        {
            placed += 1;
        }
    }
    report("random Specific x1M (1M runs)", &ipam, &id, before, t);

    let t = Instant::now();
    for _ in 0..N {
        ipam.request_address(&id, AddressRequest::Any)
            .expect("a /64 has room");
    }
    report("then 1M more Any (fill the gaps)", &ipam, &id, before, t);
}
