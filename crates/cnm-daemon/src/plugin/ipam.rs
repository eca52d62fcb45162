//! `IpamDriver.*`: cnm's IPAM (`cnm-ipam`) behind libnetwork's remote IPAM protocol.
//!
//! The pools handed to dockerd are an allocator of their own, not the controller's: a Docker
//! network made with `--ipam-driver cnm -d cnm` has its pool here *and* in the cnm network that
//! `CreateNetwork` makes with it, which one allocator would refuse as an overlap. A default pool
//! (no `Pool` asked for) avoids every pool given out here and every subnet of cnm's own networks;
//! an explicit pool that overlaps one given out here is refused ("overlaps existing pool"), as
//! Docker's default IPAM does within an address space. The allocator's state is saved to
//! `STATE_DIR/docker-plugin-ipam.json` (written whole, then renamed over) after every change
//! and restored at start, so pool ids dockerd holds survive a cnmd restart.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cnm::cnm_ipam::{
    AddressRequest, Family, Ipam, IpamConfig, IpamState, LOCAL_ADDRESS_SPACE, PoolId, PoolRequest,
};
use cnm::ipnet::IpNet;
use cnm_driver_remote::wire::ipam as wire;

use super::{Field, PluginState, body, error_reply, reply};

type St = State<Arc<PluginState>>;

/// The file the allocator's state is saved in, inside the state dir.
pub const STATE_FILE: &str = "docker-plugin-ipam.json";
/// The global address space dockerd is told about; no pool is ever given in it (every network
/// served here is local).
pub const GLOBAL_ADDRESS_SPACE: &str = "global";

/// The allocator and where it is saved.
pub(crate) struct IpamServer {
    ipam: Ipam,
    file: PathBuf,
    /// Serialises saves, so the file always ends with the latest state.
    save: tokio::sync::Mutex<()>,
}

impl IpamServer {
    /// Restores the allocator saved in `state_dir`, or starts empty.
    pub(crate) fn open(state_dir: &std::path::Path, host_id: &str) -> Result<Self, String> {
        let file = state_dir.join(STATE_FILE);
        let config = IpamConfig::docker_defaults(host_id);
        let ipam = match std::fs::read(&file) {
            Ok(bytes) => {
                let state: IpamState = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("read {}: {e}", file.display()))?;
                Ipam::restore(config, state)
                    .map_err(|e| format!("restore {}: {e}", file.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ipam::new(config),
            Err(e) => return Err(format!("read {}: {e}", file.display())),
        };
        Ok(Self {
            ipam,
            file,
            save: tokio::sync::Mutex::new(()),
        })
    }

    /// Writes the current state (whole file, then rename: never half a file).
    async fn save(&self) -> Result<(), String> {
        let _guard = self.save.lock().await;
        let bytes = serde_json::to_vec(&self.ipam.snapshot()).map_err(|e| e.to_string())?;
        super::save_file(self.file.clone(), bytes).await
    }
}

fn fail(msg: impl Into<String>) -> Response {
    error_reply(Field::Error, StatusCode::OK, msg)
}

/// `RequiresRequestReplay` is false: cnm's IPAM keeps its pools and addresses in cnm's durable
/// store and has them back after a cnmd restart (`the_ipam_plugins_pools_survive_a_restart`),
/// so dockerd need not request them again; `RequiresMACAddress` is false: addresses are not
/// chosen by MAC.
pub(crate) async fn capabilities() -> Response {
    reply(
        StatusCode::OK,
        &wire::CapabilitiesResponse {
            requires_mac_address: false,
            requires_request_replay: false,
            error: String::new(),
        },
    )
}

pub(crate) async fn address_spaces() -> Response {
    reply(
        StatusCode::OK,
        &wire::AddressSpacesResponse {
            local_default_address_space: LOCAL_ADDRESS_SPACE.into(),
            global_default_address_space: GLOBAL_ADDRESS_SPACE.into(),
            error: String::new(),
        },
    )
}

fn subnet(field: &str, s: &str) -> Result<Option<IpNet>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let n: IpNet = s.parse().map_err(|e| format!("{field} {s:?}: {e}"))?;
    if n.trunc() != n {
        return Err(format!("{field} {s:?}: host bits are set"));
    }
    Ok(Some(n))
}

/// The pool `req` asks for, checked before anything is allocated.
fn plan_pool(st: &PluginState, req: &wire::RequestPoolRequest) -> Result<PoolRequest, String> {
    if req.address_space != LOCAL_ADDRESS_SPACE {
        return Err(format!(
            "AddressSpace {:?}: cnm's IPAM has only {LOCAL_ADDRESS_SPACE:?}",
            req.address_space
        ));
    }
    let pool = subnet("Pool", &req.pool)?;
    let range = subnet("SubPool", &req.sub_pool)?;
    let mut out = match pool {
        Some(p) => {
            if req.v6 != matches!(p, IpNet::V6(_)) {
                return Err(format!("Pool {:?} does not match V6={}", req.pool, req.v6));
            }
            PoolRequest::with_subnet(p)
        }
        None if range.is_some() => {
            return Err(format!("SubPool {:?} needs a Pool", req.sub_pool));
        }
        None => {
            let mut r = PoolRequest::new(if req.v6 { Family::V6 } else { Family::V4 });
            // A default pool must not collide with the networks cnm already has: the Docker
            // network made with it becomes a cnm network too.
            for net in st.ctl.networks() {
                r.exclude
                    .extend(net.options().pools.iter().map(|p| p.subnet()));
                r.exclude
                    .extend(net.ipv4().iter().map(|d| IpNet::V4(d.pool)));
                r.exclude
                    .extend(net.ipv6().iter().map(|d| IpNet::V6(d.pool)));
            }
            r
        }
    };
    out.ip_range = range;
    Ok(out)
}

pub(crate) async fn request_pool(State(st): St, body: Bytes) -> Response {
    let req: wire::RequestPoolRequest = body!(Field::Error, "IpamDriver.RequestPool", body);
    let planned = match plan_pool(&st, &req) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let pool = match st.ipam.ipam.request_pool(&planned) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = st.ipam.save().await {
        // Atomic or nothing: a pool that could not be saved is not handed out.
        let undo = st.ipam.ipam.release_pool(&pool.id);
        let mut msg = format!("request pool {}: {e}", pool.subnet);
        if let Err(u) = undo {
            msg.push_str(&format!("; cleanup also failed: {u}"));
        }
        return fail(msg);
    }
    tracing::info!(pool = %pool.id, "docker plugin: pool given");
    reply(
        StatusCode::OK,
        &wire::RequestPoolResponse {
            pool_id: pool.id.to_string(),
            pool: pool.subnet.to_string(),
            data: BTreeMap::new(),
            error: String::new(),
        },
    )
}

fn pool_id(s: &str) -> Result<PoolId, String> {
    s.parse().map_err(|e| format!("PoolID {s:?}: {e}"))
}

pub(crate) async fn release_pool(State(st): St, body: Bytes) -> Response {
    let req: wire::ReleasePoolRequest = body!(Field::Error, "IpamDriver.ReleasePool", body);
    let id = match pool_id(&req.pool_id) {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    if let Err(e) = st.ipam.ipam.release_pool(&id) {
        return fail(e.to_string());
    }
    if let Err(e) = st.ipam.save().await {
        return fail(format!("release pool {id}: {e}"));
    }
    tracing::info!(pool = %id, "docker plugin: pool released");
    reply(StatusCode::OK, &wire::Response::default())
}

pub(crate) async fn request_address(State(st): St, body: Bytes) -> Response {
    let req: wire::RequestAddressRequest = body!(Field::Error, "IpamDriver.RequestAddress", body);
    let id = match pool_id(&req.pool_id) {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    let gateway = req
        .options
        .get(wire::REQUEST_ADDRESS_TYPE)
        .is_some_and(|t| t == wire::GATEWAY);
    let wanted = if req.address.is_empty() {
        if gateway {
            AddressRequest::Gateway
        } else {
            AddressRequest::Any
        }
    } else {
        match req.address.parse::<IpAddr>() {
            Ok(a) => AddressRequest::Specific(a),
            Err(e) => return fail(format!("Address {:?}: {e}", req.address)),
        }
    };
    let addr = match st.ipam.ipam.request_address(&id, wanted) {
        Ok(a) => a,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = st.ipam.save().await {
        let undo = st.ipam.ipam.release_address(&id, addr.addr());
        let mut msg = format!("request address in {id}: {e}");
        if let Err(u) = undo {
            msg.push_str(&format!("; cleanup also failed: {u}"));
        }
        return fail(msg);
    }
    reply(
        StatusCode::OK,
        &wire::RequestAddressResponse {
            address: addr.to_string(),
            data: BTreeMap::new(),
            error: String::new(),
        },
    )
}

pub(crate) async fn release_address(State(st): St, body: Bytes) -> Response {
    let req: wire::ReleaseAddressRequest = body!(Field::Error, "IpamDriver.ReleaseAddress", body);
    let id = match pool_id(&req.pool_id) {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    let addr = match req.address.parse::<IpAddr>() {
        Ok(a) => a,
        Err(e) => return fail(format!("Address {:?}: {e}", req.address)),
    };
    if let Err(e) = st.ipam.ipam.release_address(&id, addr) {
        return fail(e.to_string());
    }
    if let Err(e) = st.ipam.save().await {
        return fail(format!("release address {addr} in {id}: {e}"));
    }
    reply(StatusCode::OK, &wire::Response::default())
}
