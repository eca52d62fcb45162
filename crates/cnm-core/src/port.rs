//! Published ports, `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]` as `docker run -p`:
//! the types, their one grammar and rules live in [`cnm_types::port`] (the CLI and the daemon's
//! API use them too) and are re-exported here.

pub use cnm_types::port::{
    ExposedPort, PortBinding, PortError, PortRange, Protocol, check_host_ip,
};
