//! The `host` network driver: sandboxes on the host's own network stack (Docker's
//! `--network host`).
//!
//! The driver itself does nothing to the kernel: what makes a host network is its capability
//! ([`Capability::host_namespace`]), on which the controller gives a sandbox that joins one
//! the namespace it treats as the host instead of a namespace of its own (libnetwork's
//! "default sandbox"). So the container sees the host's interfaces, addresses and routes, and a
//! join creates no interface. Like `null`, at most one `host` network exists and its endpoints
//! get no addresses: it is the `null` driver's bookkeeping ([`NullDriver`]) under another name
//! and capability.
//!
//! **Owns**: the `host` registration and its capability.
//! **Does not**: create links, addresses, routes or rules, or publish ports (a process on the
//! host stack binds the host's ports itself).
//!
//! ```
//! use cnm_driver_host as _;
//! assert!(cnm_core::registered_drivers().contains(&"host"));
//! ```

use std::sync::Arc;

use cnm_core::{Capability, Driver, DriverContext, DriverError, register_driver};
use cnm_driver_null::NullDriver;

/// The registered name.
pub const NAME: &str = "host";

register_driver!(NAME, create);

/// The `host` driver: no addresses, one network at most, no host routes, and its sandboxes are
/// the host's namespace.
pub fn driver() -> NullDriver {
    NullDriver::new(
        NAME,
        Capability::local()
            .with_addresses(false)
            .with_singleton(true)
            .with_host_routes(false)
            .with_host_namespace(true),
    )
}

/// Builds the driver for one controller (the registration's constructor).
pub fn create(_ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
    Ok(Arc::new(driver()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_core::NetworkSpec;
    use cnm_types::ErrorKind;

    #[tokio::test]
    async fn life_cycle_without_kernel() {
        let d = driver();
        assert_eq!(d.name(), NAME);
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
        let c = driver().capability();
        assert!(c.host_namespace && c.singleton && !c.needs_addresses && !c.host_routes);
    }
}
