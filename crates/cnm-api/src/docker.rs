//! The network part of Docker's Engine API (what `docker network …` and the SDKs send and read),
//! with Docker's field names and casing (API 1.45+, `api/swagger.yaml` of moby).
//!
//! Request bodies decode leniently: unknown fields are ignored and `null` is accepted where Go
//! sends nil. Fields a client may leave out are `Option`s, so the daemon can tell "not given"
//! from "false", and a client serialises only what it sets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::de::nullable;

/// A string map (`Options`, `Labels`, `DriverOpts`, …).
pub type StringMap = BTreeMap<String, String>;

/// `POST /networks/create` (Docker's `NetworkCreateRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreateRequest {
    /// The network's name.
    pub name: String,
    /// Sent by docker CLIs before API 1.44 (ignored: a duplicate name is always refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_duplicate: Option<bool>,
    /// The driver (`bridge` when absent or empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `local` (or empty); `swarm` and `global` are not served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// No forwarding off the network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    /// Manually attachable (a swarm notion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachable: Option<bool>,
    /// A swarm routing-mesh network (not served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// A config-only network (not served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_only: Option<bool>,
    /// The config-only network to take the configuration from (not served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_from: Option<ConfigReference>,
    /// IPv4 on the network (API 1.47+).
    #[serde(rename = "EnableIPv4", skip_serializing_if = "Option::is_none")]
    pub enable_ipv4: Option<bool>,
    /// IPv6 on the network.
    #[serde(rename = "EnableIPv6", skip_serializing_if = "Option::is_none")]
    pub enable_ipv6: Option<bool>,
    /// Address management.
    #[serde(rename = "IPAM", skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    /// Driver options (`com.docker.network.*`, the driver's, cnm's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<StringMap>,
    /// User labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<StringMap>,
}

/// The answer to `POST /networks/create` (201).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreateResponse {
    /// The new network's id.
    pub id: String,
    /// Empty, or what the user should know about the create.
    pub warning: String,
}

/// Docker's `ConfigReference`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConfigReference {
    /// The config-only network's name.
    #[serde(deserialize_with = "nullable")]
    pub network: String,
}

/// Docker's `IPAM`, in a create request and in an inspect answer (fields in dockerd's order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ipam {
    /// The IPAM driver (`default`).
    #[serde(deserialize_with = "nullable")]
    pub driver: String,
    /// IPAM driver options; `null` where none were ever given (dockerd's predefined networks).
    pub options: Option<StringMap>,
    /// One entry per subnet.
    #[serde(deserialize_with = "nullable")]
    pub config: Vec<IpamConfig>,
}

/// One `IPAM.Config` entry; what is empty is left out when encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfig {
    /// `172.20.0.0/16`.
    #[serde(deserialize_with = "nullable")]
    pub subnet: String,
    /// `172.20.10.0/24`: where dynamic addresses come from.
    #[serde(
        rename = "IPRange",
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub ip_range: String,
    /// `172.20.10.11`.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway: String,
    /// Addresses kept from allocation, by name.
    #[serde(
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub auxiliary_addresses: StringMap,
}

/// A network as `GET /networks/{id}` and `GET /networks` show it (Docker's `NetworkInspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Network {
    /// The name.
    pub name: String,
    /// The full id.
    pub id: String,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    /// `local`.
    pub scope: String,
    /// The driver.
    pub driver: String,
    /// IPv4 enabled; shown from API 1.48 on (absent before, as dockerd does).
    #[serde(rename = "EnableIPv4", skip_serializing_if = "Option::is_none")]
    pub enable_ipv4: Option<bool>,
    /// IPv6 enabled.
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    /// Address management.
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    /// No forwarding off the network.
    pub internal: bool,
    /// Manually attachable (a swarm notion).
    pub attachable: bool,
    /// A swarm routing-mesh network.
    pub ingress: bool,
    /// Where a config-only network's configuration came from.
    pub config_from: ConfigReference,
    /// A config-only network.
    pub config_only: bool,
    /// The attached containers (sandboxes), by sandbox id.
    #[serde(deserialize_with = "nullable")]
    pub containers: BTreeMap<String, EndpointResource>,
    /// The network's options.
    #[serde(deserialize_with = "nullable")]
    pub options: StringMap,
    /// User labels.
    #[serde(deserialize_with = "nullable")]
    pub labels: StringMap,
    /// cnm's own: what a network recorded before cnmd started waits for (`driver NAME` or
    /// `ipam driver NAME`, a plugin not found yet); absent for a network that works. It comes
    /// back the moment the plugin appears.
    #[serde(rename = "Waiting", skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// One container (sandbox) attached to a network (Docker's `EndpointResource`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointResource {
    /// The container's name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The endpoint's id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// `02:42:ac:13:00:02`.
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    /// `172.19.0.2/16`, or empty.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// `fd00::2/64`, or empty.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// `POST /networks/{id}/connect` (Docker's `NetworkConnectRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkConnectRequest {
    /// The container (a cnm sandbox): name, id or unique id prefix.
    pub container: String,
    /// The endpoint's settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_config: Option<EndpointSettings>,
}

/// Docker's `EndpointSettings`: the configuration of an endpoint (the first fields) and, in
/// Docker's container inspect, its operational data (the rest, which cnmd ignores in requests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct EndpointSettings {
    /// Static addresses.
    #[serde(rename = "IPAMConfig", skip_serializing_if = "Option::is_none")]
    pub ipam_config: Option<EndpointIpamConfig>,
    /// Legacy links (ignored).
    #[serde(rename = "Links", skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<String>>,
    /// The endpoint's MAC.
    #[serde(rename = "MacAddress", skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Network-scoped DNS aliases.
    #[serde(rename = "Aliases", skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    /// Driver options of the endpoint.
    #[serde(rename = "DriverOpts", skip_serializing_if = "Option::is_none")]
    pub driver_opts: Option<StringMap>,
    /// Which endpoint gives the container its default gateway: the highest. Docker's is an
    /// int64; cnm's priorities are i32, so a larger value is refused when decoding.
    #[serde(rename = "GwPriority", skip_serializing_if = "Option::is_none")]
    pub gw_priority: Option<i32>,
    #[serde(rename = "NetworkID", skip_serializing_if = "Option::is_none")]
    pub network_id: Option<String>,
    #[serde(rename = "EndpointID", skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    #[serde(rename = "Gateway", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(rename = "IPAddress", skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(rename = "IPPrefixLen", skip_serializing_if = "Option::is_none")]
    pub ip_prefix_len: Option<u8>,
    #[serde(rename = "IPv6Gateway", skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<String>,
    #[serde(rename = "GlobalIPv6Address", skip_serializing_if = "Option::is_none")]
    pub global_ipv6_address: Option<String>,
    #[serde(
        rename = "GlobalIPv6PrefixLen",
        skip_serializing_if = "Option::is_none"
    )]
    pub global_ipv6_prefix_len: Option<u8>,
    /// DNS names of the endpoint.
    #[serde(rename = "DNSNames", skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<String>>,
}

/// Docker's `EndpointIPAMConfig`: static addresses asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointIpamConfig {
    /// `172.20.30.33`.
    #[serde(rename = "IPv4Address", skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// `2001:db8:abcd::3033`.
    #[serde(rename = "IPv6Address", skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Link-local addresses (ignored).
    #[serde(rename = "LinkLocalIPs", skip_serializing_if = "Option::is_none")]
    pub link_local_ips: Option<Vec<String>>,
}

/// `POST /networks/{id}/disconnect` (Docker's `NetworkDisconnectRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkDisconnectRequest {
    /// The container (a cnm sandbox): name, id or unique id prefix.
    pub container: String,
    /// Disconnect even if the endpoint is inconsistent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

/// The answer to `POST /networks/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkPruneResponse {
    /// The names of the deleted networks (`null` when none, as dockerd sends it).
    #[serde(deserialize_with = "nullable", serialize_with = "null_if_empty")]
    pub networks_deleted: Vec<String>,
}

fn null_if_empty<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        s.collect_seq(v)
    }
}

/// Every error answer: `{"message": "..."}` (tools match on Docker's wording).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub message: String,
}

/// One line of `GET /events` (Docker's `EventMessage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventMessage {
    /// What kind of object: `network`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `destroy`, `connect`, `disconnect`.
    #[serde(rename = "Action")]
    pub action: String,
    /// The object.
    #[serde(rename = "Actor")]
    pub actor: EventActor,
    /// `local`.
    pub scope: String,
    /// Seconds since the epoch.
    pub time: u64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: u128,
}

/// The object an event is about (Docker's `EventActor`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventActor {
    /// Its id.
    #[serde(rename = "ID")]
    pub id: String,
    /// `name`, `type` (the driver) and, for connect and disconnect, `container`.
    #[serde(rename = "Attributes")]
    pub attributes: StringMap,
}

impl EventMessage {
    /// A network event happening now; `container` is the sandbox id for connect and disconnect.
    pub fn network(
        action: &str,
        network_id: &str,
        name: &str,
        driver: &str,
        container: Option<&str>,
    ) -> Self {
        Self::network_at(
            SystemTime::now(),
            action,
            network_id,
            name,
            driver,
            container,
        )
    }

    /// A network event that happened at `at`.
    pub fn network_at(
        at: SystemTime,
        action: &str,
        network_id: &str,
        name: &str,
        driver: &str,
        container: Option<&str>,
    ) -> Self {
        let mut attributes = BTreeMap::from([
            ("name".to_owned(), name.to_owned()),
            ("type".to_owned(), driver.to_owned()),
        ]);
        if let Some(c) = container {
            attributes.insert("container".to_owned(), c.to_owned());
        }
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            kind: "network".to_owned(),
            action: action.to_owned(),
            actor: EventActor {
                id: network_id.to_owned(),
                attributes,
            },
            scope: "local".to_owned(),
            time: since.as_secs(),
            time_nano: since.as_nanos(),
        }
    }
}

/// `GET /version` (Docker's `SystemVersion`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemVersion {
    /// The product.
    #[serde(rename = "Platform")]
    pub platform: Platform,
    /// The components and their versions.
    #[serde(rename = "Components")]
    pub components: Vec<ComponentVersion>,
    /// The daemon's version.
    #[serde(rename = "Version")]
    pub version: String,
    /// The newest (default) API version served.
    #[serde(rename = "ApiVersion")]
    pub api_version: String,
    /// The oldest API version served.
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    /// The source revision.
    #[serde(rename = "GitCommit")]
    pub git_commit: String,
    /// Go's version (empty: cnmd is not written in Go).
    #[serde(rename = "GoVersion")]
    pub go_version: String,
    /// `linux`.
    #[serde(rename = "Os")]
    pub os: String,
    /// The architecture as Go names it (`amd64`, `arm64`).
    #[serde(rename = "Arch")]
    pub arch: String,
    /// `uname -r`.
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
    /// When it was built.
    #[serde(rename = "BuildTime")]
    pub build_time: String,
}

/// `GET /info` (Docker's `system.Info`): the fields of API 1.41 to 1.48 that a network daemon
/// can answer truthfully; those about images, storage, runtimes and swarm are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SystemInfo {
    /// The daemon's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Containers (for cnmd: sandboxes).
    pub containers: u64,
    /// Running containers (every sandbox).
    pub containers_running: u64,
    /// Paused containers (none).
    pub containers_paused: u64,
    /// Stopped containers (none).
    pub containers_stopped: u64,
    /// Images (none).
    pub images: u64,
    /// The storage driver (none).
    pub driver: String,
    /// The storage driver's status lines.
    #[serde(deserialize_with = "nullable")]
    pub driver_status: Vec<[String; 2]>,
    /// The plugins by kind; `Network` lists the network drivers.
    pub plugins: PluginsInfo,
    /// Memory limits supported.
    pub memory_limit: bool,
    /// Swap limits supported.
    pub swap_limit: bool,
    /// CFS period supported.
    pub cpu_cfs_period: bool,
    /// CFS quota supported.
    pub cpu_cfs_quota: bool,
    /// CPU shares supported.
    #[serde(rename = "CPUShares")]
    pub cpu_shares: bool,
    /// cpusets supported.
    #[serde(rename = "CPUSet")]
    pub cpu_set: bool,
    /// PID limits supported.
    pub pids_limit: bool,
    /// The OOM killer can be disabled.
    pub oom_kill_disable: bool,
    /// IPv4 forwarding is on in the host namespace.
    #[serde(rename = "IPv4Forwarding")]
    pub ipv4_forwarding: bool,
    /// Debug mode.
    pub debug: bool,
    /// Open file descriptors of the daemon.
    #[serde(rename = "NFd")]
    pub n_fd: u64,
    /// Goroutines (0: cnmd is not written in Go).
    #[serde(rename = "NGoroutines")]
    pub n_goroutines: u64,
    /// RFC 3339 with nanoseconds.
    pub system_time: String,
    /// The default logging driver (none).
    pub logging_driver: String,
    /// The cgroup driver (none).
    pub cgroup_driver: String,
    /// The cgroup version (none).
    pub cgroup_version: String,
    /// `GET /events` subscribers.
    #[serde(rename = "NEventsListener")]
    pub n_events_listener: u64,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of os-release.
    pub operating_system: String,
    /// `VERSION_ID` of os-release.
    #[serde(rename = "OSVersion")]
    pub os_version: String,
    /// `linux`.
    #[serde(rename = "OSType")]
    pub os_type: String,
    /// `uname -m`.
    pub architecture: String,
    /// The registry (none).
    pub index_server_address: String,
    /// Registry configuration (none: `null`).
    pub registry_config: Option<StringMap>,
    /// CPUs.
    #[serde(rename = "NCPU")]
    pub ncpu: u64,
    /// Bytes of memory.
    pub mem_total: u64,
    /// Swarm generic resources (none: `null`).
    pub generic_resources: Option<Vec<StringMap>>,
    /// The state dir.
    pub docker_root_dir: String,
    /// `HTTP_PROXY` of the daemon.
    pub http_proxy: String,
    /// `HTTPS_PROXY`.
    pub https_proxy: String,
    /// `NO_PROXY`.
    pub no_proxy: String,
    /// The host name.
    pub name: String,
    /// Daemon labels.
    #[serde(deserialize_with = "nullable")]
    pub labels: Vec<String>,
    /// An experimental build.
    pub experimental_build: bool,
    /// The daemon's version.
    pub server_version: String,
    /// OCI runtimes (none).
    #[serde(deserialize_with = "nullable")]
    pub runtimes: BTreeMap<String, RuntimeInfo>,
    /// The default runtime (none).
    pub default_runtime: String,
    /// Swarm (never active).
    pub swarm: SwarmInfo,
    /// Networks and sandboxes outlive the daemon (cnmd leaves them in place on exit).
    pub live_restore_enabled: bool,
    /// Isolation (Windows only).
    pub isolation: String,
    /// The init binary (none).
    pub init_binary: String,
    /// containerd's commit (none).
    pub containerd_commit: Commit,
    /// runc's commit (none).
    pub runc_commit: Commit,
    /// The init binary's commit (none).
    pub init_commit: Commit,
    /// Security options (none).
    #[serde(deserialize_with = "nullable")]
    pub security_options: Vec<String>,
    /// Warnings about the daemon's configuration (`null` when none).
    pub warnings: Option<Vec<String>>,
}

/// `Info.Plugins`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PluginsInfo {
    /// Volume plugins.
    #[serde(deserialize_with = "nullable")]
    pub volume: Vec<String>,
    /// Network drivers.
    #[serde(deserialize_with = "nullable")]
    pub network: Vec<String>,
    /// Authorization plugins (`null`).
    pub authorization: Option<Vec<String>>,
    /// Log drivers.
    #[serde(deserialize_with = "nullable")]
    pub log: Vec<String>,
}

/// One of `Info.Runtimes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeInfo {
    /// The runtime's program.
    pub path: String,
}

/// `Info.Swarm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmInfo {
    /// The node id (empty).
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// The node address (empty).
    pub node_addr: String,
    /// `inactive`.
    pub local_node_state: String,
    /// A manager.
    pub control_available: bool,
    /// The swarm error.
    pub error: String,
    /// Managers (`null`).
    pub remote_managers: Option<Vec<StringMap>>,
}

/// A component's commit in `Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Commit {
    /// The commit.
    #[serde(rename = "ID")]
    pub id: String,
    /// The commit the daemon expected.
    #[serde(rename = "Expected")]
    pub expected: String,
}

/// `SystemVersion.Platform`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Platform {
    /// The product's name.
    pub name: String,
}

/// One of `SystemVersion.Components`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComponentVersion {
    /// `cnmd`.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Free-form details.
    #[serde(deserialize_with = "nullable")]
    pub details: StringMap,
}

/// Docker's `filters` query parameter: key → set of values. It decodes from both of Docker's
/// encodings, `{"name":{"web":true}}` and the older `{"name":["web"]}`, and encodes as the
/// first (what current docker CLIs send).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub BTreeMap<String, BTreeSet<String>>);

impl Filters {
    /// Adds one `key=value` filter.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.entry(key.into()).or_default().insert(value.into());
    }

    /// The keys given.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The values of one key (empty when the key was not given).
    pub fn get(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0.get(key).into_iter().flatten().map(String::as_str)
    }

    /// Whether the key was given with at least one value.
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some_and(|v| !v.is_empty())
    }

    /// True when the key is absent, or `pred` holds for one of its values.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        !self.has(key) || self.get(key).any(pred)
    }

    /// Docker's label filter: every `key` or `key=value` given must match `labels`.
    pub fn labels_match(&self, key: &str, labels: &StringMap) -> bool {
        self.get(key).all(|f| label_matches(f, labels))
    }
}

/// Whether `labels` has the label `key` or `key=value` names.
pub fn label_matches(filter: &str, labels: &StringMap) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

impl Serialize for Filters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(key, values)| {
            let on: BTreeMap<&str, bool> = values.iter().map(|v| (v.as_str(), true)).collect();
            (key, on)
        }))
    }
}

impl<'de> Deserialize<'de> for Filters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Values {
            Map(BTreeMap<String, bool>),
            List(Vec<String>),
        }
        let map = BTreeMap::<String, Values>::deserialize(d)?;
        Ok(Self(
            map.into_iter()
                .map(|(key, values)| {
                    let set = match values {
                        Values::Map(m) => m
                            .into_iter()
                            .filter(|(_, on)| *on)
                            .map(|(k, _)| k)
                            .collect(),
                        Values::List(l) => l.into_iter().collect(),
                    };
                    (key, set)
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn create_body_decodes_leniently() {
        // Fields added by newer clients are ignored, `null` is "not given".
        let body = r#"{"Name":"n1","CheckDuplicate":true,"EnableIPv4":null,"EnableIPv6":true,
          "Internal":true,"ConfigFrom":null,"IPAM":{"Config":[{"Subnet":"10.9.0.0/24",
          "IPRange":"10.9.0.128/25","AuxiliaryAddresses":null}]},"Labels":{"a":"b"},
          "SomethingNew":1}"#;
        let r: NetworkCreateRequest = serde_json::from_str(body).unwrap();
        assert_eq!((r.name.as_str(), r.internal), ("n1", Some(true)));
        assert_eq!((r.enable_ipv4, r.enable_ipv6), (None, Some(true)));
        let ipam = r.ipam.unwrap();
        assert_eq!(ipam.config[0].ip_range, "10.9.0.128/25");
        assert!(ipam.config[0].auxiliary_addresses.is_empty());
        assert_eq!(r.labels.unwrap()["a"], "b");
        // Nulls where Go sends nil maps and slices.
        let r: NetworkCreateRequest = serde_json::from_str(
            r#"{"Name":"n2","IPAM":{"Driver":null,"Config":null,"Options":null},"Options":null}"#,
        )
        .unwrap();
        assert_eq!(r.ipam.unwrap(), Ipam::default());
    }

    #[test]
    fn a_client_sends_only_what_it_sets() {
        let r = NetworkCreateRequest {
            name: "n".into(),
            ipam: Some(Ipam {
                driver: "default".into(),
                config: vec![IpamConfig {
                    subnet: "10.1.0.0/24".into(),
                    ..Default::default()
                }],
                options: Some(StringMap::new()),
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"Name": "n", "IPAM": {"Driver": "default", "Options": {},
                   "Config": [{"Subnet": "10.1.0.0/24"}]}})
        );
        let d = NetworkDisconnectRequest {
            container: "c".into(),
            force: Some(false),
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({"Container": "c", "Force": false})
        );
    }

    #[test]
    fn inspect_answer_has_dockers_field_names() {
        let n = Network {
            name: "web".into(),
            enable_ipv4: Some(true),
            containers: BTreeMap::from([("sb".into(), EndpointResource::default())]),
            ..Default::default()
        };
        let v = serde_json::to_value(&n).unwrap();
        // Before API 1.48 there is no EnableIPv4, and IPAM options never given are null.
        let old = serde_json::to_value(Network::default()).unwrap();
        assert!(old.get("EnableIPv4").is_none(), "{old}");
        assert_eq!(old["IPAM"]["Options"], json!(null));
        for key in [
            "Name",
            "Id",
            "Created",
            "Scope",
            "Driver",
            "EnableIPv4",
            "EnableIPv6",
            "IPAM",
            "Internal",
            "Attachable",
            "Ingress",
            "ConfigFrom",
            "ConfigOnly",
            "Containers",
            "Options",
            "Labels",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v.as_object().unwrap().len(), 16, "{v}");
        assert_eq!(
            v["Containers"]["sb"],
            json!({"Name": "", "EndpointID": "", "MacAddress": "", "IPv4Address": "",
                   "IPv6Address": ""})
        );
        assert_eq!(serde_json::from_value::<Network>(v).unwrap(), n);
    }

    #[test]
    fn connect_body_takes_nulls() {
        let r: NetworkConnectRequest = serde_json::from_str(
            r#"{"Container":"c","EndpointConfig":{"IPAMConfig":null,"Aliases":null,
                "DriverOpts":null,"GwPriority":5,"Links":null,"NetworkID":""}}"#,
        )
        .unwrap();
        let ec = r.endpoint_config.unwrap();
        assert_eq!((ec.gw_priority, ec.ipam_config), (Some(5), None));
    }

    #[test]
    fn events_are_dockers_messages() {
        let at = UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
        let e = EventMessage::network_at(at, "connect", "abc", "web", "bridge", Some("sb1"));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"Type": "network", "Action": "connect", "scope": "local",
                   "time": 1_700_000_000u64, "timeNano": 1_700_000_000_000_000_005u64,
                   "Actor": {"ID": "abc", "Attributes":
                       {"name": "web", "type": "bridge", "container": "sb1"}}})
        );
    }

    #[test]
    fn filters_in_both_encodings() {
        let f: Filters =
            serde_json::from_str(r#"{"name":{"web":true,"off":false},"label":["a=b"]}"#).unwrap();
        assert_eq!(f.get("name").collect::<Vec<_>>(), ["web"]);
        let labels = StringMap::from([("a".to_owned(), "b".to_owned())]);
        assert!(f.labels_match("label", &labels));
        assert!(!f.labels_match("label", &StringMap::new()));
        assert!(f.any("driver", |_| false), "an absent key matches");
        assert!(!f.any("name", |v| v == "db"));
        let mut g = Filters::default();
        g.insert("name", "a");
        g.insert("name", "b");
        g.insert("driver", "bridge");
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"driver":{"bridge":true},"name":{"a":true,"b":true}}"#
        );
        assert!(serde_json::from_str::<Filters>(r#"{"name":"x"}"#).is_err());
    }
}
