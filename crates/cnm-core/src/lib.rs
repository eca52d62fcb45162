//! The cnm object model and controller: networks, endpoints and sandboxes with libnetwork's life
//! cycle, the driver and IPAM SPIs, typed options, and the store records.
//!
//! **Owns**: [`Controller`] (driver registry, IPAM, store, every object; [`Controller::shutdown`]),
//! the handles [`Network`], [`Endpoint`], [`Sandbox`] and the card's traits they implement
//! ([`ControllerApi`], [`NetworkApi`], [`EndpointApi`], [`SandboxApi`]); the life-cycle
//! operations with undo on failure, composed ones included (connect, disconnect, removing a
//! sandbox with its endpoints); typed options and their raw, Docker-shaped forms, of which it
//! names only the generic labels it owns; the [`spi::Driver`] and [`Ipam`] traits and driver
//! registration (built-in through [`register_driver!`], or while running); the [`kernel::Kernel`]
//! seam to the kernel; [`store::Store`] and the choice of the default one; reload on start and
//! the write order that makes a crash at any point look like the operation happened completely or
//! not at all (with named crash points to prove it, under the `test-hooks` feature). Global
//! scope: with a cluster store
//! ([`ControllerBuilder::cluster_store`]), a global driver's networks, their names, subnets and
//! addresses live there and are allocated with compare-and-swap transactions, so every host
//! sees one network and no two hosts take the same address; each driver persists through its
//! own prefix of either store ([`spi::DriverContext::store`], [`ScopedStore`]), allocates once
//! per network ([`spi::Driver::allocate_network`]) and shares per-endpoint facts with the other
//! hosts ([`Facts`]). The embedded DNS ([`cnm_dns::Resolver`], one per controller, on by default with
//! the real kernel: see [`ControllerBuilder::embedded_dns`]) is fed from join, leave, deletes
//! and reload.
//!
//! **Does not**: name any driver or any driver's option key, talk netlink itself (interface
//! set-up is one call into `cnm-sandbox`, through [`kernel::NetlinkKernel`]), or keep a global
//! lock across kernel work (see [`Controller`] for the lock order).
//!
//! Map: `controller.rs`, `network.rs`, `endpoint.rs`, `sandbox.rs` are the handles; `api.rs` the
//! traits; `ops/` one module per operation (create/delete network and endpoint, sandbox
//! create/delete, join, leave, the gateway's effects, the composed ones, reload); `model/` the
//! objects as data; `state.rs` what a controller owns; `cluster.rs` what global networks keep
//! in the cluster store; `facts.rs` drivers' per-endpoint facts; `dns.rs` the embedded DNS's records and
//! listeners as the operations change them, `remote_names.rs` the names of global networks'
//! endpoints shared with the other hosts; `kernel.rs` the seam; `testing.rs` a fake
//! kernel and a fake driver (tests, `test-hooks`); `spi.rs`, `ipam.rs`, `store/`, `options/`,
//! `record.rs` the contracts and formats; `undo.rs` the undo list drivers use too.
//!
//! ```no_run
//! # async fn seed() -> Result<(), cnm_core::CoreError> {
//! use cnm_core::{Controller, DriverOptions, EndpointOptions, JoinOption, NetworkOptions};
//!
//! let controller = Controller::builder().build().await?;
//! controller.configure_network_driver("bridge", DriverOptions::default()).await?;
//! let network = controller.new_network("bridge", "network1", NetworkOptions::default()).await?;
//! let ep = network.create_endpoint("Endpoint1", EndpointOptions::default()).await?;
//! let sandbox = ep
//!     .join("container1", [JoinOption::hostname("test"), JoinOption::domainname("docker.io")])
//!     .await?;
//! let sandbox_key = sandbox.key();                     // path of the container's netns
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

mod api;
mod cluster;
mod controller;
#[cfg(feature = "test-hooks")]
pub mod crash;
#[cfg(not(feature = "test-hooks"))]
mod crash {
    //! Crash points compile to nothing without the `test-hooks` feature.
    #[inline(always)]
    pub(crate) fn point(_name: &'static str) {}
    #[inline(always)]
    pub(crate) fn is_armed(_name: &'static str) -> bool {
        false
    }
}
mod dns;
mod endpoint;
mod error;
mod facts;
mod gateway;
mod host;
pub mod id;
mod ipam;
pub mod kernel;
pub(crate) mod lookup;
mod model;
mod network;
mod ops;
pub mod options;
pub mod port;
pub mod record;
mod remote_names;
mod resolve;
mod sandbox;
pub mod spi;
mod state;
pub mod store;
mod sync;
#[cfg(any(test, feature = "test-hooks"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod undo;

pub use api::{ControllerApi, EndpointApi, NetworkApi, SandboxApi};
pub use controller::{
    Controller, ControllerBuilder, DEFAULT_RESOLV_CONF, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR,
    WaitingFor, WaitingNetwork, registered_drivers,
};
pub use endpoint::Endpoint;
pub use error::CoreError;
pub use ipam::{AdoptPool, Ipam, IpamResolver};
pub use model::sandbox::FALLBACK_NAMESERVERS;
pub use network::Network;
pub use options::{
    EndpointOptions, ExposedPort, JoinOption, JoinOptions, NetworkOptions, PoolConfig,
    RawEndpointIpam, RawEndpointOptions, RawIpam, RawIpamConfig, RawJoinOptions, RawNetworkOptions,
};
pub use port::{PortBinding, PortError, PortRange, Protocol};
pub use resolve::DriverResolver;
pub use sandbox::Sandbox;
pub use spi::{
    Capability, Driver, DriverContext, DriverError, DriverFactory, DriverOptions,
    DriverRegistration, EndpointInfo, EndpointSpec, Fact, FactEvent, FactWatch, Facts, IpamData,
    JoinInfo, JoinRequest, JoinedInterface, LeaveRequest, NetworkSpec, ParsedOptions,
    PublishRequest, RestoredEndpoint, RestoredJoin, SandboxRef, Scope, StaticRoute,
};
pub use store::ScopedStore;

/// The embedded DNS resolver the controller owns ([`Controller::dns_resolver`]).
pub use cnm_dns;
/// The shared firewall a driver programs through ([`DriverContext::firewall`]).
pub use cnm_firewall;
/// The kind of every public error ([`CoreError::kind`], [`DriverError::kind`], …).
pub use cnm_types::ErrorKind;

/// The default IPAM's types, re-exported for [`Ipam`] implementors and callers.
pub use cnm_ipam;
/// The kernel layer's types that appear in this API ([`cnm_sandbox::NetNs`], …).
pub use cnm_sandbox;
/// Shared vocabulary ([`cnm_types::ErrorKind`], [`cnm_types::IfName`], [`cnm_types::MacAddress`]).
pub use cnm_types;
/// IP networks as the API takes them ([`NetworkOptions::subnet`] takes an [`ipnet::IpNet`]).
pub use ipnet;

/// The attribute a [`Driver`] implementation needs: `#[cnm::async_trait] impl Driver for …`.
pub use async_trait::async_trait;
/// The registry behind [`register_driver!`] (re-exported so a driver crate needs no dependency
/// of its own on it).
pub use inventory;

/// Registers a built-in driver: `register_driver!("name", Constructor::create)`, once per
/// driver crate, where `create` is a `fn(&DriverContext) -> Result<Arc<dyn Driver>, DriverError>`.
/// A program links the driver by naming its crate (`use my_driver as _;`).
///
/// A driver the program finds while running registers with
/// [`ControllerBuilder::driver`] or [`Controller::register_driver`] instead.
#[macro_export]
macro_rules! register_driver {
    ($name:expr, $create:path $(,)?) => {
        $crate::inventory::submit! {
            $crate::spi::DriverRegistration::new($name, $create)
        }
    };
}
