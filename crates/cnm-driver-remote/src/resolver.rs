//! [`PluginResolver`]: the controller's [`DriverResolver`] that finds network drivers among
//! Docker plugins, by name, the moment a network asks for one the controller does not have;
//! [`PluginIpamResolver`]: the same for IPAM drivers (`--ipam-driver NAME`).

use std::sync::Arc;

use async_trait::async_trait;
use cnm_core::cnm_ipam::IpamError;
use cnm_core::{Driver, DriverContext, DriverError, DriverResolver, Ipam, IpamResolver};

use crate::driver::{RemoteConfig, RemoteDriver};
use crate::ipam::RemoteIpam;

/// Finds a driver the controller does not have among the plugins in [`RemoteConfig::dirs`]:
/// the plugin is activated as a `NetworkDriver`, asked its capabilities, and becomes a driver
/// of the controller under its name.
///
/// A name no socket or spec file matches fails at once, naming every path looked at
/// ([`crate::plugin::PluginError::NotFound`], kind `NotFound`): there is no wait for a plugin
/// that may yet appear (Docker waits up to 15 s).
#[derive(Debug, Clone, Default)]
pub struct PluginResolver {
    config: RemoteConfig,
}

impl PluginResolver {
    /// A resolver looking where `config` says, with its time limits for every call.
    pub fn new(config: RemoteConfig) -> Self {
        Self { config }
    }

    /// Where it looks and how long it waits.
    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }
}

#[async_trait]
impl DriverResolver for PluginResolver {
    async fn resolve(
        &self,
        name: &str,
        _ctx: &DriverContext,
    ) -> Result<Arc<dyn Driver>, DriverError> {
        match RemoteDriver::connect(name, &self.config).await {
            Ok(driver) => {
                tracing::info!(
                    plugin = name,
                    addr = %driver.client().spec().addr,
                    "network driver plugin activated"
                );
                Ok(Arc::new(driver))
            }
            Err(e) => Err(DriverError::new(name, e.kind(), e)),
        }
    }
}

/// Finds an IPAM driver the controller does not have among the plugins in
/// [`RemoteConfig::dirs`]: the plugin is activated as an `IpamDriver` and asked its
/// capabilities and address spaces ([`RemoteIpam::connect`]). A name no socket or spec file
/// matches fails at once, naming every path looked at.
#[derive(Debug, Clone, Default)]
pub struct PluginIpamResolver {
    config: RemoteConfig,
}

impl PluginIpamResolver {
    /// A resolver looking where `config` says, with its time limits for every call.
    pub fn new(config: RemoteConfig) -> Self {
        Self { config }
    }
}

#[async_trait]
impl IpamResolver for PluginIpamResolver {
    async fn resolve(&self, name: &str) -> Result<Arc<dyn Ipam>, IpamError> {
        match RemoteIpam::connect(name, &self.config).await {
            Ok(ipam) => {
                tracing::info!(plugin = name, "ipam driver plugin activated");
                Ok(Arc::new(ipam))
            }
            Err(e) => Err(IpamError::Driver {
                driver: name.to_owned(),
                kind: e.kind(),
                source: Box::new(e),
            }),
        }
    }
}
