//! cnm: the Container Network Model (Docker's libnetwork) in Rust. This facade re-exports the
//! core's public API and links the built-in drivers selected by cargo features.
//!
//! **Owns**: which built-in drivers a program gets (`bridge`, `host`, `null`, `macvlan`,
//! `ipvlan` and `overlay`; all on by default), and
//! its default store: `cnm-store`'s embedded, crash-safe store in the state dir (linked here, so
//! `Controller::builder().build()` persists and reloads its state, and takes the state dir's lock).
//! **Does not**: implement anything itself; see `cnm-core` and the `cnm-driver-*` crates.
//!
//! Everything the API names is here: [`ErrorKind`] (the kind of every error), [`ipnet`] (subnets
//! are [`ipnet::IpNet`]s), and for a driver crate, which then needs no other dependency:
//! [`async_trait`] (implement [`Driver`] as `#[cnm::async_trait] impl Driver for …`),
//! [`register_driver!`] (`cnm::register_driver!("p2p", P2p::create);`, through the re-exported
//! [`inventory`]), or [`ControllerBuilder::driver`] / [`Controller::register_driver`] for a
//! driver found while running. [`Controller::shutdown`] lets go of the store, its lock and the
//! drivers; the handles never keep a controller alive.
//!
//! ```no_run
//! use cnm::{Controller, DriverOptions, EndpointOptions, JoinOption, NetworkOptions};
//!
//! # async fn seed() -> Result<(), cnm::CoreError> {
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
//! A runtime then starts the container's process inside the sandbox: [`Sandbox::entry`] gives
//! what to apply to its [`std::process::Command`] before spawning it — the sandbox's network
//! namespace, its hosts file and resolv.conf bind-mounted over `/etc/hosts` and
//! `/etc/resolv.conf` in a mount namespace of the process' own, and the hostname asked for at
//! the join in a UTS namespace of its own. It works from a multi-threaded (tokio) program: the
//! child enters between `fork` and `exec`, with everything prepared beforehand. The library
//! spawns nothing; the runtime does.
//!
//! ```no_run
//! # async fn run(sandbox: cnm::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
//! let entry = sandbox.entry();
//! let mut cmd = std::process::Command::new("/usr/bin/my-server");
//! entry.apply(&mut cmd)?;                              // checked now, entered in the child
//! let child = cmd.spawn().map_err(|e| entry.spawn_error(e))?;  // names the sandbox
//! // (a tokio runtime may wrap it first: `tokio::process::Command::from(cmd)`)
//! # let _ = child; Ok(()) }
//! ```
//!
//! `examples/runtime.rs` is a whole runtime: two networks, a multi-homed container with a
//! published port, processes run in it through `entry()`, a restart after
//! [`Controller::shutdown`] that adopts everything. `examples/ptp-driver/` (outside the
//! workspace) is a driver written against this facade only, with the driver author's guide.

pub use cnm_core::*;

// A driver crate that is never named is not linked, and its `inventory` registration with it.
#[cfg(feature = "bridge")]
use cnm_driver_bridge as _;
#[cfg(feature = "host")]
use cnm_driver_host as _;
#[cfg(feature = "macvlan")]
use cnm_driver_macvlan as _;
#[cfg(feature = "null")]
use cnm_driver_null as _;
#[cfg(feature = "overlay")]
use cnm_driver_overlay as _;
// The embedded store registers itself as the controller's default store (see
// `cnm_core::store::DefaultStore`); re-exported for the daemon and for tests.
pub use cnm_store;

/// The names of the built-in drivers linked into this build, sorted.
pub fn builtin_drivers() -> Vec<&'static str> {
    cnm_core::registered_drivers()
}
