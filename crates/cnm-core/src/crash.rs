//! Named crash points: compiled in, inert unless armed.
//!
//! Each lifecycle operation calls [`point`] between its steps. With the environment variable
//! [`CRASH_AT`] set to one of [`POINTS`] (`CNM_CRASH_AT=join:after-driver`), the process kills
//! itself with `SIGKILL` when it reaches that point: no destructor, no unwinding, no flush, as
//! a power cut or an OOM kill would. The crash tests arm one point per child process and check
//! that a controller restarted on the same directories finds the operation done completely or
//! not at all, and nothing leaked.

use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const CRASH_AT: &str = "CNM_CRASH_AT";

/// Every crash point, in the order of the operations' steps.
pub const POINTS: &[&str] = &[
    // Network creation: after the driver made it, before its record.
    "network-create:after-driver",
    "network-create:after-record",
    // Network deletion: after the driver removed it, before its record goes.
    "network-delete:after-driver",
    "network-delete:after-record",
    // Endpoint creation and deletion.
    "endpoint-create:after-driver",
    "endpoint-create:after-record",
    "endpoint-delete:after-driver",
    "endpoint-delete:after-record",
    // Sandbox creation: the record is committed while the namespace and files are made (the
    // point before the namespace is reached with the commit done and no kernel work started).
    "sandbox-create:record-before-netns",
    "sandbox-create:after-netns",
    "sandbox-create:after-record",
    // Join: the driver's veth, the interface configured, the gateway and ports, the records.
    "join:after-driver",
    "join:after-interface",
    "join:after-gateway",
    // The records are committed while the rest is done: the default route and the ports when
    // the gateway's switch can be told in advance, the hosts file and the DNS (reached with the
    // commit done and none of them started).
    "join:record-before-rest",
    "join:after-record",
    // Leave: records first, then the kernel.
    "leave:after-record",
    "leave:after-driver",
    // Sandbox deletion: records first, then the kernel.
    "sandbox-delete:after-record",
    "sandbox-delete:after-leave",
    "sandbox-delete:after-netns",
    // Start: after the networks were handed back to their drivers, after the sweep.
    "reload:after-networks",
    "reload:after-sweep",
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(CRASH_AT).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Whether `name` is the armed crash point (an operation that runs its commit and its kernel
/// work at once runs them one after the other when the point between them is armed, so that
/// the crash lands there every time).
pub fn is_armed(name: &'static str) -> bool {
    armed() == Some(name)
}

/// Kills the process with `SIGKILL` if `name` is the armed crash point; otherwise nothing.
pub fn point(name: &'static str) {
    if armed() == Some(name) {
        tracing::warn!(point = name, "crash point reached: killing the process");
        // SIGKILL cannot be caught: this does not return.
        if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL) {
            tracing::error!(point = name, error = %e, "failed to raise SIGKILL");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unique_and_named_op_colon_step() {
        let set: std::collections::BTreeSet<_> = POINTS.iter().collect();
        assert_eq!(set.len(), POINTS.len());
        assert!(POINTS.iter().all(|p| p.split_once(':').is_some()));
    }

    #[test]
    fn an_unarmed_point_returns() {
        point("no-such:point");
    }
}
