//! A cnm controller on a throwaway host: the one fixture every test that needs a controller
//! builds on, instead of its own copy of the builder calls.

use std::sync::Arc;

use anyhow::{Context, Result};
use cnm_core::store::MemoryStore;
use cnm_core::{Controller, ControllerBuilder};

use crate::TestHost;

/// The name server of the host's resolv.conf a controller on a [`TestHost`] gets: a
/// documentation address (RFC 5737), so what a container's resolv.conf says never depends on
/// the machine's.
pub const HOST_NAMESERVER: &str = "192.0.2.53";

impl TestHost {
    /// A controller builder bound to this host: its namespace as the host, its run and state
    /// directories, and a resolv.conf of its own (name server [`HOST_NAMESERVER`]). The store is
    /// the default one (the durable store in the state dir when `cnm-store` is linked, as with
    /// the `cnm` facade; in memory otherwise).
    pub fn controller_builder(&self) -> Result<ControllerBuilder> {
        let resolv = self.run_dir().join("host-resolv.conf");
        if !resolv.exists() {
            std::fs::write(&resolv, format!("nameserver {HOST_NAMESERVER}\n"))
                .with_context(|| format!("failed to write {}", resolv.display()))?;
        }
        Ok(Controller::builder()
            .host_netns(self.netns().clone())
            .run_dir(self.run_dir())
            .state_dir(self.state_dir())
            .resolv_conf(resolv))
    }

    /// A controller on this host with the default store (see
    /// [`TestHost::controller_builder`]).
    pub async fn controller(&self) -> Result<Controller> {
        self.controller_builder()?
            .build()
            .await
            .context("failed to build a controller on the test host")
    }

    /// A controller on this host with an in-memory store (nothing survives it).
    pub async fn memory_controller(&self) -> Result<Controller> {
        self.controller_builder()?
            .store(Arc::new(MemoryStore::new()))
            .build()
            .await
            .context("failed to build a controller on the test host")
    }

    /// A restart of cnmd: shuts `ctl` down and builds a new controller (default store) on the
    /// same host and directories, which reloads the records and restores the kernel state.
    pub async fn restart(&self, ctl: Controller) -> Result<Controller> {
        ctl.shutdown()
            .await
            .context("failed to shut the controller down")?;
        self.controller()
            .await
            .context("failed to restart the controller on the test host")
    }
}
