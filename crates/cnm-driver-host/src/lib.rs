//! The `host` network driver: sandboxes on the host's own network stack (Docker's
//! `--network host`).
//!
//! The driver itself does nothing to the kernel: what makes a host network is its capability
//! ([`Capability::host_namespace`]), on which the controller gives a sandbox that joins one
//! the namespace it treats as the host instead of a namespace of its own (libnetwork's
//! "default sandbox"). So the container sees the host's interfaces, addresses and routes, and a
//! join creates no interface. Like `null`, at most one `host` network exists and its endpoints
//! get no addresses.
//!
//! **Owns**: the `host` registration and its (empty) per-network bookkeeping.
//! **Does not**: create links, addresses, routes or rules, or publish ports (a process on the
//! host stack binds the host's ports itself).
//!
//! ```
//! use cnm_driver_host as _;
//! assert!(cnm_core::registered_drivers().contains(&"host"));
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use cnm_core::{
    Capability, Driver, DriverContext, DriverError, EndpointInfo, EndpointSpec, JoinInfo,
    JoinRequest, JoinedInterface, LeaveRequest, NetworkSpec, async_trait, register_driver,
};
use cnm_types::ErrorKind;

/// The registered name.
pub const NAME: &str = "host";

register_driver!(NAME, HostDriver::create);

/// The `host` driver. It remembers which networks exist so that it can refuse calls for unknown
/// ones.
#[derive(Debug, Default)]
pub struct HostDriver {
    networks: Mutex<BTreeSet<String>>,
}

impl HostDriver {
    /// Builds the driver for one controller (the registration's constructor).
    pub fn create(_ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(Self::default()))
    }

    fn networks(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // Plain strings: a panic elsewhere cannot leave the set inconsistent.
        self.networks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self, network_id: &str) -> Result<(), DriverError> {
        if self.networks().contains(network_id) {
            Ok(())
        } else {
            Err(DriverError::new(
                NAME,
                ErrorKind::NotFound,
                format!("network {network_id} not found"),
            ))
        }
    }
}

#[async_trait]
impl Driver for HostDriver {
    fn name(&self) -> &str {
        NAME
    }

    fn capability(&self) -> Capability {
        Capability::local()
            .with_addresses(false)
            .with_singleton(true)
            .with_host_routes(false)
            .with_host_namespace(true)
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        if !self.networks().insert(spec.id.clone()) {
            return Err(DriverError::new(
                NAME,
                ErrorKind::AlreadyExists,
                format!("network {} already exists", spec.id),
            ));
        }
        Ok(())
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        self.known(network_id)?;
        self.networks().remove(network_id);
        Ok(())
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        self.known(&spec.network_id)?;
        Ok(EndpointInfo::default())
    }

    async fn delete_endpoint(
        &self,
        network_id: &str,
        _endpoint_id: &str,
    ) -> Result<(), DriverError> {
        self.known(network_id)
    }

    async fn join(&self, request: &JoinRequest) -> Result<JoinInfo, DriverError> {
        self.known(&request.network_id)?;
        // The sandbox is the host's namespace: its interfaces and routes are the host's own.
        let mut info = JoinInfo::new(JoinedInterface::None);
        info.disable_gateway_service = true;
        Ok(info)
    }

    async fn leave(&self, request: &LeaveRequest) -> Result<(), DriverError> {
        self.known(&request.network_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn life_cycle_without_kernel() {
        let d = HostDriver::default();
        let spec = NetworkSpec::new("n1", "host");
        d.create_network(&spec).await.unwrap();
        assert_eq!(
            d.create_network(&spec).await.unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        d.delete_network("n1").await.unwrap();
        assert_eq!(
            d.delete_network("n1").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let mut bad = cnm_core::DriverOptions::new();
        bad.insert("parent".into(), "eth0".into());
        assert_eq!(
            d.parse_network_options(&bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn capability_is_the_host_namespace_without_addresses() {
        let c = HostDriver::default().capability();
        assert!(c.host_namespace && c.singleton && !c.needs_addresses && !c.host_routes);
    }
}
