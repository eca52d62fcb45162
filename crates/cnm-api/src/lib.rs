//! The wire types of cnmd's HTTP API: every request and response body it serves, as serde
//! types that cnmd encodes and decodes and the `cnm` CLI builds and reads, so both sides agree
//! by construction rather than by string keys.
//!
//! **Owns**: the network part of Docker's Engine API ([`docker`]: create, inspect and list,
//! connect, disconnect, prune, events, version, errors, the `filters` parameter), with Docker's
//! field names and casing (API 1.45+); cnm's own API under `/cnm/v1` ([`v1`]: sandboxes, connect
//! with published ports, info). Published ports travel in the one grammar of
//! [`cnm_types::port`].
//! **Does not**: any I/O or HTTP (no axum, no hyper), validation beyond the shapes and the port
//! grammar (the daemon turns bodies into the controller's typed options), routing.
//!
//! Docker's bodies decode leniently, as dockerd does: unknown fields are ignored and `null` is
//! taken wherever Go would send a nil map, slice or pointer. cnm's own request bodies are strict:
//! an unknown field is an error naming it.
//!
//! ```
//! use cnm_api::v1::SandboxConnectRequest;
//! let body: SandboxConnectRequest =
//!     serde_json::from_str(r#"{"Network": "web", "Ports": ["127.0.0.1:8080:80"]}"#).unwrap();
//! assert_eq!(body.ports[0].host_port.unwrap().start, 8080);
//! assert_eq!(
//!     serde_json::to_string(&body).unwrap(),
//!     r#"{"Network":"web","Ports":["127.0.0.1:8080:80/tcp"]}"#
//! );
//! ```

pub mod docker;
pub mod v1;

/// The port vocabulary the bodies carry.
pub use cnm_types::port::{PortBinding, PortRange, Protocol};

/// serde helpers for the shapes above.
mod de {
    use serde::{Deserialize, Deserializer};

    /// A field Go may send as `null` (a nil map, slice or string pointer): `null` is the default.
    pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }

    /// A list of published ports, each in the `-p` grammar (`127.0.0.1:8080:80/tcp`); `null`
    /// is none.
    pub(crate) mod port_specs {
        use cnm_types::port::PortBinding;
        use serde::de::Error as _;
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            ports: &[PortBinding],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_seq(ports.iter().map(ToString::to_string))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<PortBinding>, D::Error> {
            let specs: Option<Vec<Spec>> = Option::deserialize(d)?;
            Ok(specs.unwrap_or_default().into_iter().map(|s| s.0).collect())
        }

        /// One binding, parsed (and so validated) as it is decoded.
        struct Spec(PortBinding);

        impl<'de> Deserialize<'de> for Spec {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map(Spec).map_err(D::Error::custom)
            }
        }
    }
}
