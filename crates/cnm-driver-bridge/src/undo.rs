//! The undo list: every effect pushes its inverse; a failure unwinds them in reverse.

use cnm_sandbox::Netlink;

use crate::BridgeError;
use crate::firewall::FirewallHandle;

/// The inverse of one effect.
#[derive(Debug)]
pub(crate) enum Inverse {
    /// Delete the link called `name` (a veth takes its peer with it).
    DeleteLink { netlink: Netlink, name: String },
    /// Remove a network's firewall rules.
    RemoveNetworkRules {
        firewall: FirewallHandle,
        network_id: String,
    },
    /// Remove an endpoint's port mappings.
    RemovePortMappings {
        firewall: FirewallHandle,
        endpoint_id: String,
    },
    /// Remove an endpoint's guarded port (and any port mappings).
    RemoveEndpointRules {
        firewall: FirewallHandle,
        endpoint_id: String,
    },
}

impl Inverse {
    async fn run(self) -> Result<(), BridgeError> {
        match self {
            Self::DeleteLink { netlink, name } => delete_link_by_name(&netlink, &name).await,
            Self::RemoveNetworkRules {
                firewall,
                network_id,
            } => firewall.remove_network(&network_id).await,
            Self::RemovePortMappings {
                firewall,
                endpoint_id,
            } => firewall.remove_port_mappings(&endpoint_id).await,
            Self::RemoveEndpointRules {
                firewall,
                endpoint_id,
            } => firewall.remove_endpoint(&endpoint_id).await,
        }
    }
}

/// Deletes a link by name; a link already gone is fine (a sandbox deleted first takes its veth).
///
/// Returns once the kernel has unlisted the link, not when it has freed it (see
/// [`Netlink::delete_link_named`]: that saves the 15-40 ms of RCU grace periods per veth).
pub(crate) async fn delete_link_by_name(netlink: &Netlink, name: &str) -> Result<(), BridgeError> {
    netlink
        .delete_link_named(name)
        .await
        .map(drop)
        .map_err(|e| BridgeError::kernel("delete link", name, e))
}

/// Inverses of the effects done so far, in order.
#[derive(Debug, Default)]
pub(crate) struct Undo {
    steps: Vec<Inverse>,
}

impl Undo {
    pub(crate) fn push(&mut self, inverse: Inverse) {
        self.steps.push(inverse);
    }

    /// `Ok` commits (forgets the inverses); `Err` runs them in reverse and attaches every cleanup
    /// failure to the primary error.
    pub(crate) async fn finish<T>(self, result: Result<T, BridgeError>) -> Result<T, BridgeError> {
        match result {
            Ok(v) => Ok(v),
            Err(primary) => {
                let mut cleanup = Vec::new();
                for step in self.steps.into_iter().rev() {
                    if let Err(e) = step.run().await {
                        tracing::warn!(error = %e, "cleanup after a failed bridge operation failed");
                        cleanup.push(e);
                    }
                }
                Err(primary.with_cleanup(cleanup))
            }
        }
    }
}
