//! The `null` network driver: endpoints with loopback only.
//!
//! The smallest complete driver, and the template for others: it registers itself through
//! `inventory`, says what it can do, and answers every life-cycle call. Its networks need no
//! addresses and its joins create no interface, so a sandbox joined to a `null` network keeps only
//! `lo` — Docker's `--network none`.
//!
//! **Owns**: the `null` registration and its (empty) per-network bookkeeping.
//! **Does not**: create links, addresses, routes or rules; publish ports.
//!
//! A binary links it by naming the crate, which keeps its registration:
//! ```
//! use cnm_driver_null as _;
//! assert!(cnm_core::registered_drivers().contains(&"null"));
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use cnm_core::{
    Capability, Driver, DriverContext, DriverError, EndpointInfo, EndpointSpec, JoinInfo,
    JoinRequest, JoinedInterface, LeaveRequest, NetworkSpec, async_trait, register_driver,
};
use cnm_types::ErrorKind;

/// The registered name.
pub const NAME: &str = "null";

register_driver!(NAME, NullDriver::create);

/// The `null` driver. It remembers which networks exist so that it can refuse calls for unknown
/// ones, as every driver must.
///
/// The same driver, under another name and capability ([`NullDriver::new`]), serves any network
/// whose joins make no interface and whose endpoints get no addresses: the `host` driver
/// (`cnm-driver-host`) is this driver with [`Capability::host_namespace`].
#[derive(Debug)]
pub struct NullDriver {
    name: &'static str,
    capability: Capability,
    networks: Mutex<BTreeSet<String>>,
}

impl Default for NullDriver {
    fn default() -> Self {
        Self::new(
            NAME,
            Capability::local()
                .with_addresses(false)
                .with_singleton(true),
        )
    }
}

impl NullDriver {
    /// A driver registered as `name` that makes no interface and no address, saying it can do
    /// what `capability` says.
    pub fn new(name: &'static str, capability: Capability) -> Self {
        Self {
            name,
            capability,
            networks: Mutex::default(),
        }
    }

    /// Builds the driver for one controller (the registration's constructor).
    pub fn create(_ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(Self::default()))
    }

    fn networks(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // The set holds plain strings; a panic elsewhere cannot leave it inconsistent.
        self.networks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn known(&self, network_id: &str) -> Result<(), DriverError> {
        if self.networks().contains(network_id) {
            Ok(())
        } else {
            Err(DriverError::new(
                self.name,
                ErrorKind::NotFound,
                format!("network {network_id} not found"),
            ))
        }
    }
}

#[async_trait]
impl Driver for NullDriver {
    fn name(&self) -> &str {
        self.name
    }

    fn capability(&self) -> Capability {
        self.capability
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        // Its options were parsed (none accepted) by the default `parse_network_options`.
        if !self.networks().insert(spec.id.clone()) {
            return Err(DriverError::new(
                self.name,
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
        let d = NullDriver::default();
        let spec = NetworkSpec::new("n1", "none");
        d.create_network(&spec).await.unwrap();
        assert_eq!(
            d.create_network(&spec).await.unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        d.delete_endpoint("n1", "e1").await.unwrap();
        d.delete_network("n1").await.unwrap();
        assert_eq!(
            d.delete_network("n1").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let mut bad = cnm_core::DriverOptions::new();
        bad.insert("mtu".into(), "1500".into());
        let e = d.parse_network_options(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("\"mtu\""), "{e}");
    }

    #[test]
    fn capability_has_no_addresses() {
        let c = NullDriver::default().capability();
        assert!(!c.needs_addresses && c.singleton);
    }
}
