//! Model-based property tests: random sequences of pool and address operations checked against
//! a plain `BTreeSet` of held addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use cnm_types::ErrorKind;
use proptest::prelude::*;

use super::*;
use crate::family::{addr_to_u128, u128_to_addr};

#[derive(Debug, Clone)]
enum Op {
    Any,
    Gateway,
    /// An offset from the start of the subnet (wrapped to its size).
    Specific(u128),
    /// An index into the held addresses (wrapped to their count).
    Release(usize),
    /// An offset of an address that is probably not held.
    ReleaseOffset(u128),
    SnapshotRestore,
}

#[derive(Debug, Clone)]
struct Setup {
    subnet: IpNet,
    range: Option<IpNet>,
    /// Offsets of aux addresses from the subnet start.
    aux: Vec<u128>,
}

/// Small pools (an IPv4 /24 … /32, an IPv6 /120 … /128) that fill up, and large ones (an IPv4
/// /16, an IPv6 /64) whose hot spots are the first and the last 64 addresses.
fn setup() -> impl Strategy<Value = Setup> {
    let small = prop_oneof![
        (24u8..=32).prop_map(|len| make_net("10.1.0.0".parse().unwrap(), len)),
        (120u8..=128).prop_map(|len| make_net("fd00:1::".parse().unwrap(), len)),
    ];
    let large = prop_oneof![
        Just("10.1.0.0/16".parse().unwrap()),
        Just("fd00:1::/64".parse().unwrap())
    ];
    (
        prop_oneof![small, large],
        0u8..=8,
        any::<bool>(),
        proptest::collection::vec(any::<u128>(), 0..3),
    )
        .prop_map(|(subnet, extra, with_range, aux_seeds)| {
            let (first, last) = net_bounds(&subnet);
            let family = Family::of_net(&subnet);
            let size = last - first + 1;
            // A range of the same or a longer prefix, aligned at the top of the subnet, so large
            // pools also exercise their last addresses.
            let range = (with_range && extra > 0).then(|| {
                let len = (subnet.prefix_len() + extra).min(family.max_prefix_len());
                let mask = crate::family::host_mask(family, len);
                make_net(u128_to_addr(family, last & !mask), len)
            });
            let usable = |o: u128| {
                !(o == 0 && size > 2 || (family == Family::V4 && o == size - 1 && size > 2))
            };
            let aux = aux_seeds
                .iter()
                .map(|s| s % size.min(256))
                .filter(|&o| usable(o))
                .collect();
            Setup { subnet, range, aux }
        })
}

fn make_net(addr: IpAddr, len: u8) -> IpNet {
    crate::config::make_net(addr, len).trunc()
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let hot = prop_oneof![0u128..64, (u128::MAX - 63)..=u128::MAX];
    let op = prop_oneof![
        6 => Just(Op::Any),
        1 => Just(Op::Gateway),
        3 => hot.clone().prop_map(Op::Specific),
        4 => any::<usize>().prop_map(Op::Release),
        1 => hot.prop_map(Op::ReleaseOffset),
        1 => Just(Op::SnapshotRestore),
    ];
    proptest::collection::vec(op, 0..200)
}

/// The model of one pool.
struct Model {
    family: Family,
    first: u128,
    last: u128,
    dynamic: (u128, u128),
    aux: BTreeSet<u128>,
    held: BTreeSet<u128>,
}

impl Model {
    fn new(setup: &Setup) -> Self {
        let family = Family::of_net(&setup.subnet);
        let (first, last) = net_bounds(&setup.subnet);
        let len = setup.subnet.prefix_len();
        let low = if (family == Family::V4 && len <= 30) || (family == Family::V6 && len <= 126) {
            first + 1
        } else {
            first
        };
        let high = if family == Family::V4 && len <= 30 {
            last - 1
        } else {
            last
        };
        let (rf, rl) = setup.range.map_or((first, last), |r| net_bounds(&r));
        Self {
            family,
            first,
            last,
            dynamic: (rf.max(low), rl.min(high)),
            aux: setup.aux.iter().map(|o| first + o).collect(),
            held: BTreeSet::new(),
        }
    }

    /// Structurally reserved (network, broadcast, anycast)?
    fn structural(&self, v: u128) -> bool {
        let len = self.last - self.first;
        match self.family {
            Family::V4 => len > 1 && (v == self.first || v == self.last),
            Family::V6 => len > 1 && v == self.first,
        }
    }

    fn lowest_free(&self) -> Option<u128> {
        let (low, high) = self.dynamic;
        let mut v = low;
        while v <= high {
            if !self.held.contains(&v) && !self.aux.contains(&v) {
                return Some(v);
            }
            v = v.checked_add(1)?;
        }
        None
    }

    fn offset(&self, o: u128) -> u128 {
        let size = self.last - self.first;
        // Offsets near u128::MAX count back from the end of the subnet.
        if o > u128::MAX - 64 {
            self.last - (u128::MAX - o).min(size)
        } else {
            self.first + o.min(size)
        }
    }
}

fn run(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut ipam = Ipam::new(IpamConfig::default());
    let mut req = PoolRequest::with_subnet(setup.subnet);
    req.ip_range = setup.range;
    let mut model = Model::new(setup);
    req.aux_addresses = model
        .aux
        .iter()
        .map(|&v| u128_to_addr(model.family, v))
        .collect();
    let pool = match ipam.request_pool(&req) {
        Ok(pool) => pool,
        // The first usable address (default gateway) may be listed as aux: refused up front.
        Err(IpamError::GatewayIsAux { .. }) => return Ok(()),
        Err(err) => return Err(TestCaseError::fail(format!("{err}"))),
    };
    let gateway = addr_to_u128(pool.gateway);
    let addr = |v: u128| u128_to_addr(model.family, v);
    for op in ops {
        let before = ipam.snapshot();
        let result = match *op {
            Op::Any => {
                let got = ipam.request_address(&pool.id, AddressRequest::Any);
                match model.lowest_free() {
                    Some(expected) => {
                        let got = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(got.addr(), addr(expected));
                        prop_assert_eq!(got.prefix_len(), setup.subnet.prefix_len());
                        prop_assert!(setup.subnet.contains(&got.addr()));
                        if let Some(range) = setup.range {
                            prop_assert!(range.contains(&got.addr()), "{} outside {}", got, range);
                        }
                        model.held.insert(expected);
                        Ok(())
                    }
                    None => {
                        let err = got.expect_err("model says the pool is exhausted");
                        prop_assert_eq!(err.kind(), ErrorKind::Unavailable);
                        Err(err)
                    }
                }
            }
            Op::Gateway => {
                let got = ipam.request_address(&pool.id, AddressRequest::Gateway);
                if model.held.insert(gateway) {
                    prop_assert_eq!(
                        got.map_err(|e| TestCaseError::fail(e.to_string()))?.addr(),
                        pool.gateway
                    );
                    Ok(())
                } else {
                    let err = got.expect_err("gateway is held");
                    prop_assert_eq!(err.kind(), ErrorKind::Conflict);
                    Err(err)
                }
            }
            Op::Specific(o) => {
                let v = model.offset(o);
                let got = ipam.request_address(&pool.id, AddressRequest::Specific(addr(v)));
                if model.structural(v) {
                    prop_assert_eq!(got.expect_err("reserved").kind(), ErrorKind::InvalidInput);
                } else if model.aux.contains(&v) || model.held.contains(&v) {
                    prop_assert_eq!(got.expect_err("taken").kind(), ErrorKind::Conflict);
                } else {
                    prop_assert_eq!(
                        got.map_err(|e| TestCaseError::fail(e.to_string()))?.addr(),
                        addr(v)
                    );
                    model.held.insert(v);
                }
                Ok(())
            }
            Op::Release(i) if !model.held.is_empty() => {
                let v = *model
                    .held
                    .iter()
                    .nth(i % model.held.len())
                    .expect("index wrapped to len");
                ipam.release_address(&pool.id, addr(v))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.held.remove(&v);
                Ok(())
            }
            Op::Release(_) => Ok(()),
            Op::ReleaseOffset(o) => {
                let v = model.offset(o);
                let got = ipam.release_address(&pool.id, addr(v));
                if model.held.remove(&v) {
                    prop_assert!(got.is_ok());
                    Ok(())
                } else {
                    Err(got.expect_err("address is not held"))
                }
            }
            Op::SnapshotRestore => {
                let json = serde_json::to_string(&before).expect("state serialises");
                let state: IpamState = serde_json::from_str(&json).expect("state deserialises");
                ipam = Ipam::restore(IpamConfig::default(), state)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&ipam.snapshot(), &before);
                Ok(())
            }
        };
        if result.is_err() {
            prop_assert_eq!(
                &ipam.snapshot(),
                &before,
                "a failing call changed the state"
            );
        }
        // The IPAM holds exactly what the model holds.
        let state = ipam.snapshot();
        let runs = &state.pools[0].allocated;
        let held: Vec<u128> = runs
            .iter()
            .flat_map(|r| addr_to_u128(r.first)..=addr_to_u128(r.last))
            .collect();
        prop_assert_eq!(held, model.held.iter().copied().collect::<Vec<_>>());
        prop_assert!(
            model
                .held
                .iter()
                .all(|v| !model.structural(*v) && !model.aux.contains(v))
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn allocations_match_a_model(setup in setup(), ops in ops()) {
        run(&setup, &ops)?;
    }
}
