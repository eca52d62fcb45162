//! Address allocation throughput: one `Any` allocation plus its release per iteration, on an
//! IPv4 /16 and an IPv6 /64, on an empty pool and on one already holding many addresses in
//! fragmented runs (every other address of the first 2 × N allocated).

use std::net::IpAddr;

use cnm_ipam::{AddressRequest, Ipam, IpamConfig, PoolId, PoolRequest, parse_subnet};
use divan::Bencher;

fn main() {
    divan::main();
}

/// A pool of `subnet` holding `held` addresses, every other one of the first 2 × `held`.
fn fragmented(subnet: &str, held: usize) -> (Ipam, PoolId) {
    let ipam = Ipam::new(IpamConfig::default());
    let subnet = parse_subnet("subnet", subnet).expect("benchmark subnet is valid");
    let pool = ipam
        .request_pool(&PoolRequest::with_subnet(subnet))
        .expect("empty IPAM accepts any subnet");
    let addrs: Vec<IpAddr> = (0..2 * held)
        .map(|_| {
            ipam.request_address(&pool.id, AddressRequest::Any)
                .expect("pool is large enough")
                .addr()
        })
        .collect();
    for addr in addrs.iter().step_by(2) {
        ipam.release_address(&pool.id, *addr)
            .expect("address was allocated");
    }
    (ipam, pool.id)
}

fn alloc_release(bencher: Bencher<'_, '_>, subnet: &str, held: usize) {
    let (ipam, id) = fragmented(subnet, held);
    bencher.bench_local(|| {
        let addr = ipam
            .request_address(&id, AddressRequest::Any)
            .expect("pool has room");
        ipam.release_address(&id, addr.addr())
            .expect("address was just allocated");
    });
}

/// Allocate + release on an IPv4 /16, with `held` addresses already allocated.
#[divan::bench(args = [0, 10_000])]
fn v4_slash16_alloc_release(bencher: Bencher<'_, '_>, held: usize) {
    alloc_release(bencher, "10.1.0.0/16", held);
}

/// Allocate + release on an IPv6 /64, with `held` addresses already allocated.
#[divan::bench(args = [0, 10_000, 100_000])]
fn v6_slash64_alloc_release(bencher: Bencher<'_, '_>, held: usize) {
    alloc_release(bencher, "fd00:1::/64", held);
}

/// Allocating (without release) 10,000 addresses in a fresh IPv6 /64, i.e. a fill rate.
#[divan::bench(items_count = 10_000u32)]
fn v6_slash64_fill_10k(bencher: Bencher<'_, '_>) {
    bencher
        .with_inputs(|| fragmented("fd00:1::/64", 0))
        .bench_local_values(|(ipam, id)| {
            for _ in 0..10_000 {
                divan::black_box(
                    ipam.request_address(&id, AddressRequest::Any)
                        .expect("pool has room"),
                );
            }
            (ipam, id)
        });
}

/// Specific addresses scattered over an IPv6 /64 (worst case for the run map: no merging).
#[divan::bench(items_count = 10_000u32)]
fn v6_slash64_specific_scattered_10k(bencher: Bencher<'_, '_>) {
    bencher
        .with_inputs(|| fragmented("fd00:1::/64", 0))
        .bench_local_values(|(ipam, id)| {
            let base = u128::from(
                "fd00:1::"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("constant address"),
            );
            for i in 0..10_000u128 {
                // A multiplicative hash of i spreads the addresses over the 64-bit host part.
                let host = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & u128::from(u64::MAX)) | 1;
                let addr = IpAddr::V6((base | host).into());
                divan::black_box(
                    ipam.request_address(&id, AddressRequest::Specific(addr))
                        .ok(),
                );
            }
            (ipam, id)
        });
}
