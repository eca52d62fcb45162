//! Network drivers and IPAM drivers in other processes, over Docker's plugin protocol: the
//! client half (cnm calls a plugin, as dockerd does).
//!
//! **Owns**: the protocol client ([`plugin`]: discovery by name in Docker's directories, the
//! `Plugin.Activate` handshake, bounded calls, re-activation of a restarted plugin), the exact
//! wire types of every `NetworkDriver.*` and `IpamDriver.*` call ([`wire`]), and two thin
//! adapters: [`RemoteDriver`] (cnm's driver SPI) and [`RemoteIpam`] (cnm's IPAM trait, with
//! libnetwork's overlap avoidance for the pools a plugin hands out).
//! **Does not**: touch the kernel (the controller moves the interface a plugin returns into the
//! sandbox, as for any driver), run programs, or serve cnm's drivers to dockerd (the server
//! half).
//!
//! A driver is found by name when it is connected; an unknown name fails at once, naming every
//! path looked at:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use cnm_driver_remote::plugin::{PluginDirs, PluginError};
//! use cnm_driver_remote::{RemoteConfig, RemoteDriver, RemoteError};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = RemoteConfig {
//!     dirs: PluginDirs::new(vec![dir.path().join("run")], vec![dir.path().join("etc")]),
//!     ..RemoteConfig::default()
//! };
//! let err = RemoteDriver::connect("weave", &config).await.unwrap_err();
//! assert!(matches!(err, RemoteError::Plugin(PluginError::NotFound { .. })));
//! assert!(err.to_string().starts_with("plugin \"weave\" not found"));
//! # }
//! ```
//!
//! With a plugin running, the driver joins a controller like a built-in one
//! (`Controller::builder().driver(name, |_| Ok(Arc::new(driver)))`), under the plugin's name;
//! or the controller finds it by name itself, when a network first asks for it, through a
//! [`PluginResolver`] (`Controller::builder().driver_resolver(Arc::new(PluginResolver::new(config)))`).

mod driver;
mod error;
mod ipam;
pub mod plugin;
mod resolver;
pub mod wire;

pub use driver::{RemoteConfig, RemoteDriver};
pub use error::RemoteError;
pub use ipam::{IpamCapabilities, RemoteIpam};
pub use resolver::{PluginIpamResolver, PluginResolver};
