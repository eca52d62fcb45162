//! `IpamDriver.*`: the remote IPAM protocol (libnetwork's `docs/ipam.md`).
//!
//! The error field of every answer is `Error` (not `Err` as for network drivers). Pools and
//! allocated addresses travel in CIDR notation; requested and released addresses bare.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::null_default;
use crate::plugin::Call;

/// The subsystem name in `Implements`.
pub const SUBSYSTEM: &str = "IpamDriver";

/// `IpamDriver.GetCapabilities` (no body; optional: a plugin without it has no capabilities).
pub const GET_CAPABILITIES: Call = Call::new("IpamDriver.GetCapabilities")
    .idempotent()
    .optional();
/// `IpamDriver.GetDefaultAddressSpaces` (no body).
pub const GET_DEFAULT_ADDRESS_SPACES: Call =
    Call::new("IpamDriver.GetDefaultAddressSpaces").idempotent();
/// `IpamDriver.RequestPool` (reference-counted by the plugin: not repeated blindly).
pub const REQUEST_POOL: Call = Call::new("IpamDriver.RequestPool");
/// `IpamDriver.ReleasePool` (reference-counted: not repeated blindly).
pub const RELEASE_POOL: Call = Call::new("IpamDriver.ReleasePool");
/// `IpamDriver.RequestAddress`.
pub const REQUEST_ADDRESS: Call = Call::new("IpamDriver.RequestAddress");
/// `IpamDriver.ReleaseAddress`.
pub const RELEASE_ADDRESS: Call = Call::new("IpamDriver.ReleaseAddress");

/// The `RequestAddress` option naming what the address is for (`ipamapi.RequestAddressType`).
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Its value for a network's gateway; also the `Data` key of a gateway a plugin chose with the
/// pool (`netlabel.Gateway`).
pub const GATEWAY: &str = "com.docker.network.gateway";
/// The `RequestAddress` option carrying the endpoint's MAC when the plugin requires it.
pub const MAC_ADDRESS: &str = "com.docker.network.endpoint.macaddress";

// Every answer carries the plugin's error text.
answers!(error: Response, CapabilitiesResponse, AddressSpacesResponse, RequestPoolResponse, RequestAddressResponse);

/// The answer of every call whose success is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The plugin's error; empty on success.
    #[serde(rename = "Error", default, deserialize_with = "null_default")]
    pub error: String,
}

/// The answer to `GetCapabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// Whether `RequestAddress` needs the endpoint's MAC in its options.
    #[serde(
        rename = "RequiresMACAddress",
        default,
        deserialize_with = "null_default"
    )]
    pub requires_mac_address: bool,
    /// Whether the plugin wants its pools and gateways requested again after a restart.
    #[serde(
        rename = "RequiresRequestReplay",
        default,
        deserialize_with = "null_default"
    )]
    pub requires_request_replay: bool,
    /// The plugin's error.
    #[serde(rename = "Error", default, deserialize_with = "null_default")]
    pub error: String,
}

/// The answer to `GetDefaultAddressSpaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpacesResponse {
    /// The address space of local-scope networks.
    #[serde(
        rename = "LocalDefaultAddressSpace",
        default,
        deserialize_with = "null_default"
    )]
    pub local_default_address_space: String,
    /// The address space of global-scope networks.
    #[serde(
        rename = "GlobalDefaultAddressSpace",
        default,
        deserialize_with = "null_default"
    )]
    pub global_default_address_space: String,
    /// The plugin's error.
    #[serde(rename = "Error", default, deserialize_with = "null_default")]
    pub error: String,
}

/// `RequestPool`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPoolRequest {
    /// The address space.
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    /// The pool wanted, in CIDR notation; empty for one of the plugin's choosing.
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    /// A range inside the pool that container addresses come from; empty for all of it.
    #[serde(rename = "SubPool", default, deserialize_with = "null_default")]
    pub sub_pool: String,
    /// IPAM driver options.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
    /// Whether a pool of the plugin's choosing must be IPv6.
    #[serde(rename = "V6", default, deserialize_with = "null_default")]
    pub v6: bool,
}

/// The answer to `RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPoolResponse {
    /// The pool's id (the same pool always has the same id).
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    /// The pool, in CIDR notation.
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    /// The plugin's metadata; [`GATEWAY`] names a gateway it chose (CIDR notation).
    #[serde(rename = "Data", default, deserialize_with = "null_default")]
    pub data: BTreeMap<String, String>,
    /// The plugin's error.
    #[serde(rename = "Error", default, deserialize_with = "null_default")]
    pub error: String,
}

/// `ReleasePool`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePoolRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `RequestAddress`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAddressRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address wanted, bare (`10.0.0.5`); empty for any.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// Options ([`REQUEST_ADDRESS_TYPE`], [`MAC_ADDRESS`]).
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
}

/// The answer to `RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestAddressResponse {
    /// The address, in CIDR notation (`10.0.0.5/24`).
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// The plugin's metadata.
    #[serde(rename = "Data", default, deserialize_with = "null_default")]
    pub data: BTreeMap<String, String>,
    /// The plugin's error.
    #[serde(rename = "Error", default, deserialize_with = "null_default")]
    pub error: String,
}

/// `ReleaseAddress`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseAddressRequest {
    /// The pool's id.
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The address, bare.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugin::Answer as _;
    use crate::wire::keys;

    // Shapes from libnetwork's docs/ipam.md, placeholders replaced by values of their form.

    #[test]
    fn handshake_answers_as_documented() {
        let a: AddressSpacesResponse = serde_json::from_str(
            r#"{"LocalDefaultAddressSpace": "local", "GlobalDefaultAddressSpace": "global"}"#,
        )
        .unwrap();
        assert_eq!(a.local_default_address_space, "local");
        assert_eq!(a.global_default_address_space, "global");
        let a: CapabilitiesResponse =
            serde_json::from_str(r#"{"RequiresMACAddress": true, "RequiresRequestReplay": false}"#)
                .unwrap();
        assert!(a.requires_mac_address && !a.requires_request_replay);
    }

    #[test]
    fn request_pool_as_documented() {
        let v = serde_json::to_value(RequestPoolRequest {
            address_space: "local".into(),
            pool: "10.1.0.0/16".into(),
            sub_pool: "10.1.4.0/24".into(),
            options: BTreeMap::new(),
            v6: false,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"AddressSpace": "local", "Pool": "10.1.0.0/16", "SubPool": "10.1.4.0/24",
                   "Options": {}, "V6": false})
        );
        let a: RequestPoolResponse = serde_json::from_str(
            r#"{"PoolID": "local/10.1.0.0/16", "Pool": "10.1.0.0/16",
                "Data": {"com.docker.network.gateway": "10.1.0.254/16"}}"#,
        )
        .unwrap();
        assert_eq!(a.pool_id, "local/10.1.0.0/16");
        assert_eq!(a.data[GATEWAY], "10.1.0.254/16");
        let a: RequestPoolResponse =
            serde_json::from_str(r#"{"PoolID": "p", "Pool": "10.1.0.0/16", "Data": null}"#)
                .unwrap();
        assert!(a.data.is_empty());
        assert_eq!(
            keys(
                &serde_json::to_value(ReleasePoolRequest {
                    pool_id: "p".into()
                })
                .unwrap()
            ),
            ["PoolID"]
        );
    }

    #[test]
    fn addresses_as_documented() {
        let v = serde_json::to_value(RequestAddressRequest {
            pool_id: "p".into(),
            address: "10.1.0.5".into(),
            options: [(REQUEST_ADDRESS_TYPE.to_owned(), GATEWAY.to_owned())].into(),
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"PoolID": "p", "Address": "10.1.0.5",
                   "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        );
        let a: RequestAddressResponse =
            serde_json::from_str(r#"{"Address": "10.1.0.5/16", "Data": {}}"#).unwrap();
        assert_eq!(a.address, "10.1.0.5/16");
        let v = serde_json::to_value(ReleaseAddressRequest {
            pool_id: "p".into(),
            address: "10.1.0.5".into(),
        })
        .unwrap();
        assert_eq!(keys(&v), ["Address", "PoolID"]);
    }

    #[test]
    fn errors_travel_in_error_not_err() {
        let a: Response = serde_json::from_str(r#"{"Error": "pool exhausted"}"#).unwrap();
        assert_eq!(a.error(), "pool exhausted");
        let a: RequestAddressResponse = serde_json::from_str(r#"{"Err": "ignored"}"#).unwrap();
        assert_eq!(a.error(), "");
    }
}
