//! [`PluginResolver`]: the controller's [`DriverResolver`] that finds network drivers among
//! Docker plugins, by name, the moment a network asks for one the controller does not have.

use std::sync::Arc;

use async_trait::async_trait;
use cnm_core::{Driver, DriverContext, DriverError, DriverResolver};

use crate::driver::{RemoteConfig, RemoteDriver};

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
