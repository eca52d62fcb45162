//! Which of a sandbox's endpoints provides its default route, and which `ethN` a new interface
//! gets. Pure: the sandbox keeps one [`GatewayCandidate`] per joined endpoint.

use std::cmp::Ordering;

/// What the gateway choice needs to know about one joined endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GatewayCandidate {
    /// The endpoint's id.
    pub endpoint_id: String,
    /// The join's gateway priority (higher ranks first).
    pub priority: i32,
    /// The network is internal, or the driver disabled the gateway service for this endpoint:
    /// such an endpoint never provides the default route.
    pub no_gateway_service: bool,
    /// The driver gave an IPv4 or IPv6 gateway.
    pub has_gateway: bool,
    /// The network's name (the final tie-break, as libnetwork).
    pub network_name: String,
}

impl GatewayCandidate {
    fn can_serve(&self) -> bool {
        !self.no_gateway_service && self.has_gateway
    }
}

/// libnetwork's order of a sandbox's endpoints: higher gateway priority first; endpoints that
/// cannot give a default route (internal, gateway service disabled) last; then endpoints with a
/// gateway before those without; then by network name.
pub(crate) fn order(a: &GatewayCandidate, b: &GatewayCandidate) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.no_gateway_service.cmp(&b.no_gateway_service))
        .then(b.has_gateway.cmp(&a.has_gateway))
        .then_with(|| a.network_name.cmp(&b.network_name))
}

/// The endpoint that provides the default route: the first in [`order`] that can serve, if any.
pub(crate) fn select(candidates: &[GatewayCandidate]) -> Option<&GatewayCandidate> {
    candidates
        .iter()
        .filter(|c| c.can_serve())
        .min_by(|a, b| order(a, b))
}

/// The lowest `N` such that `ethN` is not used by the sandbox (`used` holds the N in use).
pub(crate) fn pick_index(used: impl IntoIterator<Item = u32>) -> u32 {
    let mut used: Vec<u32> = used.into_iter().collect();
    used.sort_unstable();
    used.dedup();
    let mut n = 0;
    for u in used {
        if u == n {
            n += 1;
        } else if u > n {
            break;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, priority: i32, no_gw: bool, has_gw: bool, net: &str) -> GatewayCandidate {
        GatewayCandidate {
            endpoint_id: id.into(),
            priority,
            no_gateway_service: no_gw,
            has_gateway: has_gw,
            network_name: net.into(),
        }
    }

    #[test]
    fn ordering_follows_libnetwork() {
        let mut v = [
            c("internal", 0, true, true, "a"),
            c("nogw", 0, false, false, "a"),
            c("zeta", 0, false, true, "zeta"),
            c("alpha", 0, false, true, "alpha"),
            c("prio", 5, false, true, "zzz"),
        ];
        v.sort_by(order);
        let ids: Vec<&str> = v.iter().map(|c| c.endpoint_id.as_str()).collect();
        assert_eq!(ids, ["prio", "alpha", "zeta", "nogw", "internal"]);
    }

    #[test]
    fn selection_skips_endpoints_that_cannot_serve() {
        assert_eq!(
            select(&[c("a", 0, false, true, "n1"), c("b", 0, false, true, "n0")])
                .unwrap()
                .endpoint_id,
            "b"
        );
        // A higher priority does not make an internal endpoint the gateway.
        assert_eq!(
            select(&[c("i", 9, true, true, "a"), c("b", 0, false, true, "b")])
                .unwrap()
                .endpoint_id,
            "b"
        );
        assert_eq!(
            select(&[c("i", 9, true, true, "a"), c("n", 0, false, false, "b")]),
            None
        );
        assert_eq!(select(&[]), None);
        assert_eq!(
            select(&[c("lo", -1, false, true, "a"), c("hi", 1, false, true, "z")])
                .unwrap()
                .endpoint_id,
            "hi"
        );
    }

    #[test]
    fn eth_index_is_lowest_free() {
        assert_eq!(pick_index([]), 0);
        assert_eq!(pick_index([0, 1]), 2);
        assert_eq!(pick_index([1, 2]), 0);
        assert_eq!(pick_index([0, 2]), 1);
        assert_eq!(pick_index([2, 0, 0, 1]), 3);
    }
}
