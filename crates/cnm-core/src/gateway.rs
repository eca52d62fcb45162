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
    /// Whether the endpoint can provide a default route at all.
    pub(crate) fn can_serve(&self) -> bool {
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

/// What joining `me` to a sandbox whose other endpoints are `others` does to its gateway.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinOutcome<'a> {
    /// `me` becomes the gateway endpoint.
    Gateway,
    /// `me` could serve, but this one of `others` ranks first and keeps (or takes) the role.
    Outranked(&'a GatewayCandidate),
    /// `me` can never provide the default route (internal, no gateway, service disabled).
    CannotServe,
}

/// Decides [`JoinOutcome`] by libnetwork's [`order`].
pub(crate) fn join_outcome<'a>(
    others: &'a [GatewayCandidate],
    me: &GatewayCandidate,
) -> JoinOutcome<'a> {
    if !me.can_serve() {
        return JoinOutcome::CannotServe;
    }
    // `select` over the sandbox's list (the joining endpoint last) keeps the first of equals.
    match select(others) {
        Some(best) if order(me, best) != Ordering::Less => JoinOutcome::Outranked(best),
        _ => JoinOutcome::Gateway,
    }
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
    fn a_joining_endpoint_knows_whether_it_becomes_the_gateway() {
        let others = [c("a", 0, false, true, "alpha"), c("i", 9, true, true, "in")];
        // Same priority, later network name: alpha keeps it.
        assert_eq!(
            join_outcome(&others, &c("z", 0, false, true, "zeta")),
            JoinOutcome::Outranked(&others[0])
        );
        // A higher priority, or an earlier name, takes it.
        assert_eq!(
            join_outcome(&others, &c("z", 1, false, true, "zeta")),
            JoinOutcome::Gateway
        );
        assert_eq!(
            join_outcome(&others, &c("b", 0, false, true, "aaa")),
            JoinOutcome::Gateway
        );
        // A lower priority never does; an internal one or one without gateway cannot.
        assert_eq!(
            join_outcome(&others, &c("b", -1, false, true, "aaa")),
            JoinOutcome::Outranked(&others[0])
        );
        assert_eq!(
            join_outcome(&others, &c("x", 100, true, true, "aaa")),
            JoinOutcome::CannotServe
        );
        assert_eq!(
            join_outcome(&[], &c("x", 0, false, false, "aaa")),
            JoinOutcome::CannotServe
        );
        // Alone (or among endpoints that cannot serve), it is the gateway.
        assert_eq!(
            join_outcome(&others[1..], &c("z", 0, false, true, "zeta")),
            JoinOutcome::Gateway
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
