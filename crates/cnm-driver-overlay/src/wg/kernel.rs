//! The kernel's WireGuard, where the kernel has it: a link of kind `wireguard` named
//! [`TUN_NAME`](super::TUN_NAME) (so the rest of the overlay sees the same device, tunnel
//! address and MTU as with the userspace engine), configured over generic netlink
//! ([`super::genl`]): this host's private key, the listen port, no fwmark, and one peer per other
//! host with its public key, its endpoint and, as allowed IPs, its tunnel address alone (/128:
//! a peer cannot speak for another, as the userspace path's `admits`). No persistent keepalive,
//! as the userspace path: VXLAN traffic and WireGuard's own timers keep sessions up.
//!
//! Unlike the TUN device, the link outlives the process that made it: a crashed cnmd's is
//! deleted and made anew at the next start, and the driver's shutdown deletes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cnm_core::spi::DriverContext;
use cnm_sandbox::{LinkKind, LinkSpec, SandboxError};
use cnm_types::{FailedTo, IfName};

use super::genl::{DeviceSet, GenlSocket, PeerSet};
use super::keys::{KeyPair, parse_key};
use super::{HostFact, TUN_NAME, host_of_tunnel};
use crate::{OverlayError, lock};

/// What creating the kernel's device gave.
pub(crate) enum Created {
    /// The device exists (down, unconfigured).
    Yes,
    /// The kernel has no WireGuard: why, as the kernel said it.
    Unsupported(String),
}

/// Tries to create the `wireguard` link (a leftover of a crashed cnmd is deleted first).
pub(crate) async fn create(ctx: &DriverContext) -> Result<Created, OverlayError> {
    let host = &ctx.host_netlink;
    host.delete_link_named(TUN_NAME)
        .await
        .map_err(|e| OverlayError::failed("delete leftover", TUN_NAME, e))?;
    let name = IfName::new(TUN_NAME.to_owned())
        .map_err(|e| OverlayError::invalid("link name", TUN_NAME, e.to_string()))?;
    match host
        .create_link(&LinkSpec::new(name, LinkKind::Wireguard))
        .await
    {
        Ok(()) => Ok(Created::Yes),
        // EOPNOTSUPP, "Unknown device type": no wireguard module (this is what a kernel
        // without it answers; cnm-sandbox maps it). Nothing was created.
        Err(e @ SandboxError::Unsupported { .. }) => Ok(Created::Unsupported(e.to_string())),
        Err(e) => Err(OverlayError::failed("create", TUN_NAME, e)),
    }
}

/// The configured kernel device: the generic netlink socket and the peers as set.
#[derive(Debug)]
pub(crate) struct KernelDevice {
    genl: Arc<Mutex<GenlSocket>>,
    peers: Mutex<HashMap<String, HostFact>>,
}

impl KernelDevice {
    /// Opens the generic netlink socket in the host namespace and sets the device's key and
    /// port, with no peers (the watch adds them).
    pub(crate) async fn configure(
        ctx: &DriverContext,
        keys: &KeyPair,
        port: u16,
    ) -> Result<Self, OverlayError> {
        let genl = ctx
            .host_ns
            .run(GenlSocket::open)
            .await
            .map_err(|e| {
                OverlayError::failed("open generic netlink in", ctx.host_ns.to_string(), e)
            })?
            .map_err(|e| {
                OverlayError::io("resolve the wireguard generic netlink family", TUN_NAME, e)
            })?;
        let dev = Self {
            genl: Arc::new(Mutex::new(genl)),
            peers: Mutex::new(HashMap::new()),
        };
        let mut set = DeviceSet::new(TUN_NAME);
        set.private_key = Some(keys.secret.to_bytes());
        set.listen_port = Some(port);
        set.fwmark = Some(0);
        set.replace_peers = true;
        dev.apply("configure", set).await?;
        Ok(dev)
    }

    /// Sends `set` on a blocking thread (the socket is blocking; a change is one round trip).
    async fn apply(&self, op: &'static str, set: DeviceSet) -> Result<(), OverlayError> {
        let genl = self.genl.clone();
        tokio::task::spawn_blocking(move || lock(&genl).set_device(&set))
            .await
            .map_err(|e| OverlayError::io(op, TUN_NAME, std::io::Error::other(e)))?
            .map_err(|e| OverlayError::io(op, TUN_NAME, e))
    }

    /// The hosts whose peers are set.
    pub(crate) fn hosts(&self) -> Vec<String> {
        lock(&self.peers).keys().cloned().collect()
    }

    /// Sets `host`'s peer from its fact (a changed key replaces the old peer in the same
    /// message).
    pub(crate) async fn learn(&self, host: &str, fact: HostFact) -> Result<bool, OverlayError> {
        let key = parse_key(&fact.public_key).ok_or_else(|| {
            OverlayError::invalid(
                "WireGuard public key",
                fact.public_key.clone(),
                "not 64 hex digits",
            )
        })?;
        if host_of_tunnel(fact.tunnel).is_none() {
            return Err(OverlayError::invalid(
                "WireGuard tunnel address",
                fact.tunnel.to_string(),
                "not a cnm tunnel address",
            ));
        }
        let old = lock(&self.peers).get(host).cloned();
        if old.as_ref() == Some(&fact) {
            return Ok(false);
        }
        let set = peer_update(old.as_ref(), &fact, key);
        self.apply("set a peer of", set).await?;
        lock(&self.peers).insert(host.to_owned(), fact);
        Ok(true)
    }

    /// Removes `host`'s peer.
    pub(crate) async fn forget(&self, host: &str) -> Result<bool, OverlayError> {
        let Some(old) = lock(&self.peers).get(host).cloned() else {
            return Ok(false);
        };
        if let Some(key) = parse_key(&old.public_key) {
            let mut set = DeviceSet::new(TUN_NAME);
            set.peers.push(PeerSet::remove(key));
            self.apply("remove a peer of", set).await?;
        }
        lock(&self.peers).remove(host);
        Ok(true)
    }

    /// Replaces the device's private key (the kernel starts new sessions with every peer).
    pub(crate) async fn set_key(&self, keys: &KeyPair) -> Result<(), OverlayError> {
        let mut set = DeviceSet::new(TUN_NAME);
        set.private_key = Some(keys.secret.to_bytes());
        self.apply("set the private key of", set).await
    }
}

/// The message setting a peer from `fact`, removing the peer of `old` first if its key was
/// another.
pub(crate) fn peer_update(old: Option<&HostFact>, fact: &HostFact, key: [u8; 32]) -> DeviceSet {
    let mut set = DeviceSet::new(TUN_NAME);
    if let Some(old_key) = old
        .filter(|o| o.public_key != fact.public_key)
        .and_then(|o| parse_key(&o.public_key))
    {
        set.peers.push(PeerSet::remove(old_key));
    }
    set.peers.push(PeerSet {
        public_key: key,
        remove: false,
        endpoint: Some(fact.endpoint),
        keepalive: Some(0),
        allowed_ips: Some(vec![(fact.tunnel.into(), 128)]),
    });
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(key: u8) -> HostFact {
        HostFact {
            public_key: super::super::keys::hex(&[key; 32]),
            endpoint: "192.168.77.2:51820".parse().unwrap(),
            tunnel: "fd63:6e6d:7767::c0a8:4d02".parse().unwrap(),
            epoch: 1,
        }
    }

    #[test]
    fn a_peer_is_its_key_endpoint_and_tunnel_address_alone_and_a_new_key_replaces_the_old() {
        let new = fact(0x22);
        let set = peer_update(None, &new, [0x22; 32]);
        assert_eq!(set.peers.len(), 1);
        let p = &set.peers[0];
        assert_eq!(p.endpoint, Some(new.endpoint));
        assert_eq!(p.allowed_ips, Some(vec![(new.tunnel.into(), 128)]));
        assert!(!set.replace_peers && set.private_key.is_none());
        // The same host with another key: the old peer goes in the same message.
        let set = peer_update(Some(&fact(0x11)), &new, [0x22; 32]);
        assert_eq!(set.peers[0], PeerSet::remove([0x11; 32]));
        assert_eq!(set.peers[1].public_key, [0x22; 32]);
        // Only the endpoint or epoch changed: no removal.
        let mut moved = fact(0x22);
        moved.epoch = 2;
        assert_eq!(peer_update(Some(&new), &moved, [0x22; 32]).peers.len(), 1);
    }
}
