//! How many sandboxes a descriptor limit allows: cnmd logs it at start when it is low.

/// Descriptors cnmd holds for one sandbox with the embedded DNS on and one published port: its
/// DNS listener's UDP and TCP sockets (2), the port's reservation (1: one dual-stack socket).
/// Its namespace is not among them (opened by path for each use), nor its netlink socket (the
/// pool of `cnm-sandbox` keeps at most [`cnm::cnm_sandbox::POOL_LIMIT`] open for all sandboxes
/// together).
pub const DESCRIPTORS_PER_SANDBOX: u64 = 3;

/// Descriptors cnmd needs whatever the sandboxes: the store, the host's netlink and firewall
/// sockets, the pooled netlink sockets, the API listener, logs, plugin connections.
pub const DESCRIPTORS_RESERVED: u64 = 256;

/// Below this many sandboxes allowed, cnmd warns at start.
pub const FEW_SANDBOXES: u64 = 10_000;

/// How many sandboxes (with the embedded DNS on and one published port each) fit in `nofile`
/// descriptors when up to `connections` API connections may be open (the server caps them at
/// half the limit).
pub fn sandboxes_allowed(nofile: u64, connections: u64) -> u64 {
    let connections = connections.min(nofile / 2);
    nofile
        .saturating_sub(connections)
        .saturating_sub(DESCRIPTORS_RESERVED)
        / DESCRIPTORS_PER_SANDBOX
}

/// The warning cnmd logs for a descriptor limit of `nofile`, if it allows fewer than
/// [`FEW_SANDBOXES`] sandboxes.
pub fn low_limit_warning(nofile: u64, connections: u64) -> Option<String> {
    let allowed = sandboxes_allowed(nofile, connections);
    (allowed < FEW_SANDBOXES).then(|| {
        format!(
            "the descriptor limit (RLIMIT_NOFILE {nofile}) allows about {allowed} sandboxes with \
             embedded DNS and one published port each ({DESCRIPTORS_PER_SANDBOX} descriptors \
             each, {connections} API connections at most); raise the hard limit (LimitNOFILE= \
             in the service, ulimit -Hn) for more"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_allowed_by_a_limit() {
        // This CI container: 20,000 descriptors, 1,024 connections at most.
        assert_eq!(sandboxes_allowed(20_000, 1_024), (20_000 - 1_024 - 256) / 3);
        // Connections never take more than half the limit.
        assert_eq!(sandboxes_allowed(1_024, 1_024), (1_024 - 512 - 256) / 3);
        // Nothing left: none, not an underflow.
        assert_eq!(sandboxes_allowed(100, 10), 0);
        assert_eq!(sandboxes_allowed(0, 0), 0);
        assert_eq!(
            sandboxes_allowed(1 << 20, 1_024),
            ((1 << 20) - 1_024 - 256) / 3
        );
    }

    #[test]
    fn warns_only_when_few_sandboxes_fit() {
        let low = low_limit_warning(20_000, 1_024).expect("20,000 is low");
        assert!(
            low.contains("20000") && low.contains("6240 sandboxes"),
            "{low}"
        );
        assert!(low_limit_warning(1 << 20, 1_024).is_none());
        // The boundary: exactly FEW_SANDBOXES allowed is enough.
        let enough = FEW_SANDBOXES * DESCRIPTORS_PER_SANDBOX + DESCRIPTORS_RESERVED + 10;
        assert_eq!(sandboxes_allowed(enough, 10), FEW_SANDBOXES);
        assert!(low_limit_warning(enough, 10).is_none());
        assert!(low_limit_warning(enough - 1, 10).is_some());
    }
}
