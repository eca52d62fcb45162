//! Fault injection for tests: force a failure right after one named step of an operation.
//!
//! Only with the `test-hooks` feature (tests and the soak enable it; release builds leave it
//! out): [`fault_point!`](crate::fault_point) compiles to nothing without it. Tests arm one point
//! with [`crate::BridgeDriver::inject_fault`]; the next time that step completes the operation
//! fails as if the following step had failed, which proves the undo list removes everything
//! before it.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::BridgeError;

/// A step after which a failure can be forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultPoint {
    /// create_network: the bridge link exists.
    NetworkBridgeCreated,
    /// create_network: the bridge's sysctls are set.
    NetworkSysctlsSet,
    /// create_network: the gateway addresses are on the bridge.
    NetworkAddressesAdded,
    /// create_network: the bridge is up.
    NetworkBridgeUp,
    /// create_network: forwarding is enabled in the host namespace.
    NetworkForwardingEnabled,
    /// create_network: the firewall has the network's rules.
    NetworkFirewallProgrammed,
    /// join: the endpoint's bridge port is guarded (anti-spoofing elements in the firewall).
    JoinPortGuarded,
    /// join: the veth pair exists (container end inside the sandbox).
    JoinVethCreated,
    /// join: the container end's sysctls are set.
    JoinSysctlsSet,
    /// join: the container end's index is known.
    JoinInterfaceFound,
    /// program_external_connectivity: host ports are reserved (sockets bound).
    PublishPortsReserved,
    /// program_external_connectivity: the firewall has the port mappings.
    PublishFirewallProgrammed,
    /// program_external_connectivity: stale UDP conntrack entries are flushed.
    PublishConntrackFlushed,
}

impl FaultPoint {
    /// Every point, in the order they occur.
    pub const ALL: [FaultPoint; 13] = [
        Self::NetworkBridgeCreated,
        Self::NetworkSysctlsSet,
        Self::NetworkAddressesAdded,
        Self::NetworkBridgeUp,
        Self::NetworkForwardingEnabled,
        Self::NetworkFirewallProgrammed,
        Self::JoinPortGuarded,
        Self::JoinVethCreated,
        Self::JoinSysctlsSet,
        Self::JoinInterfaceFound,
        Self::PublishPortsReserved,
        Self::PublishFirewallProgrammed,
        Self::PublishConntrackFlushed,
    ];

    fn code(self) -> usize {
        // 0 means "disarmed".
        Self::ALL
            .iter()
            .position(|p| *p == self)
            .map_or(0, |i| i + 1)
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One armed point at most; firing disarms it.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    armed: AtomicUsize,
}

impl Faults {
    pub(crate) fn arm(&self, point: Option<FaultPoint>) {
        self.armed
            .store(point.map_or(0, FaultPoint::code), Ordering::SeqCst);
    }

    /// Fails once if `point` is armed.
    pub(crate) fn check(&self, point: FaultPoint) -> Result<(), BridgeError> {
        let code = point.code();
        if self.armed.load(Ordering::Relaxed) == code
            && self
                .armed
                .compare_exchange(code, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(BridgeError::Injected(point));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inert_by_default_and_fires_once() {
        let f = Faults::default();
        for p in FaultPoint::ALL {
            assert!(f.check(p).is_ok());
        }
        f.arm(Some(FaultPoint::JoinSysctlsSet));
        assert!(f.check(FaultPoint::JoinVethCreated).is_ok());
        assert!(matches!(
            f.check(FaultPoint::JoinSysctlsSet),
            Err(BridgeError::Injected(FaultPoint::JoinSysctlsSet))
        ));
        assert!(f.check(FaultPoint::JoinSysctlsSet).is_ok());
    }
}
