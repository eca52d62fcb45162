//! The cnm object model and controller: networks, endpoints and sandboxes with libnetwork's life
//! cycle, the driver and IPAM SPIs, typed options, and the store records.
//!
//! **Owns**: [`Controller`] (driver registry, IPAM, store, every object), [`Network`],
//! [`Endpoint`], [`Sandbox`]; the join flow (driver join → interface set-up → gateway choice →
//! hosts/resolv.conf → published ports → records), undo on failure; typed options and their
//! raw, Docker-shaped forms; the [`spi::Driver`] and [`Ipam`] traits; [`store::Store`] and the
//! choice of the default one ([`store::DefaultStore`], registered by a linked backend); reload on
//! start (records back into objects, IPAM rebuilt from them, networks handed back to their
//! drivers, the kernel reconciled with the records) and the write order that makes a crash at
//! any point look like the operation happened completely or not at all, with named
//! [`crash`] points to prove it.
//! **Does not**: name any driver (drivers register through `inventory`), talk netlink itself
//! (it goes through `cnm-sandbox`), or keep a global lock across kernel work (see
//! [`Controller`] for the lock order).
//!
//! ```no_run
//! # async fn seed() -> Result<(), cnm_core::CoreError> {
//! use cnm_core::{Controller, DriverOptions, EndpointOptions, JoinOption, NetworkOptions};
//!
//! let controller = Controller::builder().build().await?;
//! controller.configure_network_driver("bridge", DriverOptions::default()).await?;
//! let network = controller.new_network("bridge", "network1", NetworkOptions::default()).await?;
//! let ep = network.create_endpoint("Endpoint1", EndpointOptions::default()).await?;
//! let sandbox_key = ep
//!     .join("container1", [JoinOption::hostname("test"), JoinOption::domainname("docker.io")])
//!     .await?;
//! # let _ = sandbox_key; Ok(()) }
//! ```
//!
//! Options parse once at the boundary; bad input is refused naming the field and the value:
//!
//! ```
//! use cnm_core::{NetworkOptions, RawIpamConfig, RawNetworkOptions};
//!
//! let mut raw = RawNetworkOptions::default();
//! raw.ipam.config.push(RawIpamConfig {
//!     subnet: "10.1.0.0/24".into(),
//!     gateway: "10.2.0.1".into(),
//!     ..Default::default()
//! });
//! let err = NetworkOptions::try_from(raw).unwrap_err();
//! assert_eq!(err.to_string(), "invalid gateway \"10.2.0.1\": it is not inside subnet 10.1.0.0/24");
//! ```

mod controller;
pub mod crash;
mod endpoint;
mod error;
mod gateway;
mod host;
pub mod id;
mod ipam;
mod network;
pub mod options;
pub mod port;
pub mod record;
mod reload;
mod sandbox;
pub mod spi;
pub mod store;
mod undo;

pub use controller::{
    Controller, ControllerBuilder, DEFAULT_RESOLV_CONF, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR,
    FALLBACK_NAMESERVERS, registered_drivers,
};
pub use endpoint::Endpoint;
pub use error::CoreError;
pub use ipam::Ipam;
pub use network::Network;
pub use options::{
    EndpointOptions, ExposedPort, JoinOption, JoinOptions, NetworkOptions, PoolConfig,
    RawEndpointIpam, RawEndpointOptions, RawIpam, RawIpamConfig, RawJoinOptions, RawNetworkOptions,
};
pub use port::{PortBinding, PortError, PortRange, Protocol};
pub use sandbox::Sandbox;
pub use spi::{
    Capability, Driver, DriverContext, DriverError, DriverOptions, DriverRegistration,
    EndpointInfo, EndpointSpec, IpamData, JoinInfo, JoinRequest, JoinedInterface, LeaveRequest,
    NetworkSpec, RestoredEndpoint, RestoredJoin, SandboxRef, Scope, StaticRoute,
};

/// The shared firewall a driver programs through ([`DriverContext::firewall`]).
pub use cnm_firewall;
/// The default IPAM's types, re-exported for [`Ipam`] implementors and callers.
pub use cnm_ipam;
/// The kernel layer's types that appear in this API ([`cnm_sandbox::NetNs`], …).
pub use cnm_sandbox;
/// Shared vocabulary ([`cnm_types::ErrorKind`], [`cnm_types::IfName`], [`cnm_types::MacAddress`]).
pub use cnm_types;
