//! The peer table: the other hosts' WireGuard identities, as they published them, each with
//! its tunnel ([`Tunn`]); and the routing decisions of the data path, kept pure so they are
//! tested without a TUN device or a socket.
//!
//! A packet read from the TUN device goes to the peer whose tunnel address is its IPv6
//! destination (the VXLAN device of an encrypted network sends to the peer host's tunnel
//! address); a datagram from the underlay is taken only from a known peer's endpoint address,
//! and what it decrypts to is written to the TUN device only if its source is that peer's own
//! tunnel address (WireGuard's "allowed IPs": a peer cannot speak for another).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::{Deserialize, Serialize};

/// What a host publishes about its WireGuard end, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFact {
    /// Its static public key (64 hex digits).
    pub public_key: String,
    /// Where its WireGuard socket listens on the underlay.
    pub endpoint: SocketAddr,
    /// Its tunnel address (the VTEP of its encrypted networks).
    pub tunnel: Ipv6Addr,
    /// A number new at each start of its engine: a restarted host has lost its sessions, so
    /// its peers start theirs anew too.
    pub epoch: u64,
}

/// One other host.
pub(crate) struct Peer {
    pub(crate) host: String,
    pub(crate) fact: HostFact,
    pub(crate) tunn: Mutex<Tunn>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("host", &self.host)
            .field("fact", &self.fact)
            .finish_non_exhaustive()
    }
}

/// What [`PeerTable::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// A new peer.
    Added,
    /// A known peer with a new key, endpoint, tunnel address or epoch: a new tunnel.
    Replaced,
    /// The same fact again: nothing changed.
    Unchanged,
}

/// Why a fact cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadFact {
    /// The public key is not 64 hex digits.
    Key(String),
    /// The tunnel address is not one a host's advertise address gives.
    Tunnel(Ipv6Addr),
}

/// The other hosts, by host id, by tunnel address and by endpoint address.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    by_host: HashMap<String, Arc<Peer>>,
    by_tunnel: HashMap<Ipv6Addr, Arc<Peer>>,
    by_endpoint: HashMap<IpAddr, Arc<Peer>>,
    next_index: u32,
}

impl PeerTable {
    /// Adds or replaces `host`'s peer; a replaced one gets a fresh tunnel (its old sessions
    /// were with a key or a process that is gone).
    pub(crate) fn upsert(
        &mut self,
        host: &str,
        fact: HostFact,
        own: &StaticSecret,
    ) -> Result<Change, BadFact> {
        let key = super::keys::parse_key(&fact.public_key)
            .ok_or_else(|| BadFact::Key(fact.public_key.clone()))?;
        if super::host_of_tunnel(fact.tunnel).is_none() {
            return Err(BadFact::Tunnel(fact.tunnel));
        }
        let change = match self.by_host.get(host) {
            Some(p) if p.fact == fact => return Ok(Change::Unchanged),
            Some(_) => Change::Replaced,
            None => Change::Added,
        };
        self.remove(host);
        // Tunn keeps 24 bits of the index (it shifts it left by 8).
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            own.clone(),
            PublicKey::from(key),
            None,
            None,
            self.next_index,
            None,
        );
        let peer = Arc::new(Peer {
            host: host.to_owned(),
            fact: fact.clone(),
            tunn: Mutex::new(tunn),
        });
        self.by_tunnel.insert(fact.tunnel, peer.clone());
        self.by_endpoint.insert(fact.endpoint.ip(), peer.clone());
        self.by_host.insert(host.to_owned(), peer);
        Ok(change)
    }

    /// Forgets `host`'s peer.
    pub(crate) fn remove(&mut self, host: &str) -> Option<Arc<Peer>> {
        let old = self.by_host.remove(host)?;
        if self
            .by_tunnel
            .get(&old.fact.tunnel)
            .is_some_and(|p| Arc::ptr_eq(p, &old))
        {
            self.by_tunnel.remove(&old.fact.tunnel);
        }
        let ip = old.fact.endpoint.ip();
        if self
            .by_endpoint
            .get(&ip)
            .is_some_and(|p| Arc::ptr_eq(p, &old))
        {
            self.by_endpoint.remove(&ip);
        }
        Some(old)
    }

    /// `host`'s peer.
    pub(crate) fn get(&self, host: &str) -> Option<Arc<Peer>> {
        self.by_host.get(host).cloned()
    }

    /// The hosts known.
    pub(crate) fn hosts(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }

    /// Every peer (for the timers and a rotation).
    pub(crate) fn peers(&self) -> Vec<Arc<Peer>> {
        self.by_host.values().cloned().collect()
    }

    /// The peer a packet read from the TUN device goes to.
    pub(crate) fn route(&self, packet: &[u8]) -> Route {
        match ipv6_addrs(packet) {
            None => Route::NotIpv6,
            Some((_, dst)) => match self.by_tunnel.get(&dst) {
                Some(p) => Route::Peer(p.clone()),
                None => Route::NoPeer(dst),
            },
        }
    }

    /// The peer a datagram from `from` on the underlay belongs to.
    pub(crate) fn by_endpoint_ip(&self, from: IpAddr) -> Option<Arc<Peer>> {
        self.by_endpoint.get(&from).cloned()
    }
}

/// Where a packet from the TUN device goes.
#[derive(Debug)]
pub(crate) enum Route {
    /// To this peer.
    Peer(Arc<Peer>),
    /// No peer has that tunnel address (its host is gone, or not known yet): dropped.
    NoPeer(Ipv6Addr),
    /// Not an IPv6 packet (the TUN device carries only VXLAN between tunnel addresses):
    /// dropped.
    NotIpv6,
}

/// An IPv6 packet's source and destination.
pub(crate) fn ipv6_addrs(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = packet[8..24].try_into().ok()?;
    let dst: [u8; 16] = packet[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

/// Whether a packet `peer` decrypted may enter the TUN device: an IPv6 packet from the peer's
/// own tunnel address.
pub(crate) fn admits(peer: &HostFact, packet: &[u8]) -> bool {
    ipv6_addrs(packet).is_some_and(|(src, _)| src == peer.tunnel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::keys::KeyPair;
    use crate::wg::tunnel_addr;
    use std::net::Ipv4Addr;

    fn fact(pair: &KeyPair, last: u8, epoch: u64) -> HostFact {
        let ul = Ipv4Addr::new(192, 168, 77, last);
        HostFact {
            public_key: pair.public_hex(),
            endpoint: SocketAddr::new(ul.into(), 51820),
            tunnel: tunnel_addr(ul.into()).unwrap(),
            epoch,
        }
    }

    fn v6_packet(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[5] = 8; // payload length: 48 - 40
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn peers_are_added_replaced_on_change_and_removed() {
        let own = KeyPair::generate();
        let (k2, k3) = (KeyPair::generate(), KeyPair::generate());
        let mut t = PeerTable::default();
        assert_eq!(
            t.upsert("h2", fact(&k2, 2, 1), &own.secret),
            Ok(Change::Added)
        );
        assert_eq!(
            t.upsert("h3", fact(&k3, 3, 1), &own.secret),
            Ok(Change::Added)
        );
        assert_eq!(
            t.upsert("h2", fact(&k2, 2, 1), &own.secret),
            Ok(Change::Unchanged)
        );
        // A rotated key, a restart (new epoch): a new tunnel.
        let k2b = KeyPair::generate();
        assert_eq!(
            t.upsert("h2", fact(&k2b, 2, 1), &own.secret),
            Ok(Change::Replaced)
        );
        assert_eq!(
            t.upsert("h2", fact(&k2b, 2, 2), &own.secret),
            Ok(Change::Replaced)
        );
        let mut hosts: Vec<_> = t.hosts().collect();
        hosts.sort_unstable();
        assert_eq!(hosts, ["h2", "h3"]);
        assert_eq!(t.peers().len(), 2);
        assert!(t.remove("h2").is_some());
        assert!(t.remove("h2").is_none());
        let f2 = fact(&k2, 2, 1);
        assert!(t.by_endpoint_ip(f2.endpoint.ip()).is_none());
        assert!(matches!(
            t.route(&v6_packet(Ipv6Addr::LOCALHOST, f2.tunnel)),
            Route::NoPeer(a) if a == f2.tunnel
        ));
    }

    #[test]
    fn bad_facts_are_refused_and_change_nothing() {
        let own = KeyPair::generate();
        let k = KeyPair::generate();
        let mut t = PeerTable::default();
        let mut f = fact(&k, 2, 1);
        f.public_key = "nope".into();
        assert_eq!(
            t.upsert("h2", f, &own.secret),
            Err(BadFact::Key("nope".into()))
        );
        let mut f = fact(&k, 2, 1);
        f.tunnel = Ipv6Addr::LOCALHOST;
        assert_eq!(
            t.upsert("h2", f, &own.secret),
            Err(BadFact::Tunnel(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(t.hosts().count(), 0);
    }

    #[test]
    fn packets_route_by_tunnel_address_and_decrypted_ones_need_the_peers_source() {
        let own = KeyPair::generate();
        let (k2, k3) = (KeyPair::generate(), KeyPair::generate());
        let mut t = PeerTable::default();
        let (f2, f3) = (fact(&k2, 2, 1), fact(&k3, 3, 1));
        t.upsert("h2", f2.clone(), &own.secret).unwrap();
        t.upsert("h3", f3.clone(), &own.secret).unwrap();
        let me = tunnel_addr(Ipv4Addr::new(192, 168, 77, 1).into()).unwrap();
        match t.route(&v6_packet(me, f3.tunnel)) {
            Route::Peer(p) => assert_eq!(p.host, "h3"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.route(&[0x45; 60]), Route::NotIpv6));
        assert!(matches!(t.route(&[0x60; 10]), Route::NotIpv6));
        assert_eq!(t.by_endpoint_ip(f2.endpoint.ip()).unwrap().host, "h2");
        // h2 may only speak as h2.
        assert!(admits(&f2, &v6_packet(f2.tunnel, me)));
        assert!(!admits(&f2, &v6_packet(f3.tunnel, me)));
        assert!(!admits(&f2, &[0x45; 60]));
    }

    #[test]
    fn two_tables_hold_a_working_tunnel_between_them() {
        // The real protocol, both ends in memory: a handshake, then a packet each way.
        let (k1, k2) = (KeyPair::generate(), KeyPair::generate());
        let (mut t1, mut t2) = (PeerTable::default(), PeerTable::default());
        t1.upsert("h2", fact(&k2, 2, 1), &k1.secret).unwrap();
        t2.upsert("h1", fact(&k1, 1, 1), &k2.secret).unwrap();
        let (p2, p1) = (t1.peers().pop().unwrap(), t2.peers().pop().unwrap());
        let me = p1.fact.tunnel;
        let packet = v6_packet(me, p2.fact.tunnel);
        let mut a = vec![0u8; 2048];
        let mut b = vec![0u8; 2048];
        let mut c = vec![0u8; 2048];
        use boringtun::noise::TunnResult as R;
        // No session yet: a handshake initiation, the packet queued.
        let init = match p2.tunn.lock().unwrap().encapsulate(&packet, &mut a) {
            R::WriteToNetwork(d) => d.to_vec(),
            other => panic!("{other:?}"),
        };
        let resp = match p1.tunn.lock().unwrap().decapsulate(None, &init, &mut b) {
            R::WriteToNetwork(d) => d.to_vec(),
            other => panic!("{other:?}"),
        };
        // The response completes it; the queued packet goes out.
        let mut t = p2.tunn.lock().unwrap();
        assert!(matches!(
            t.decapsulate(None, &resp, &mut c),
            R::WriteToNetwork(_)
        ));
        let data = match t.decapsulate(None, &[], &mut c) {
            R::WriteToNetwork(d) => d.to_vec(),
            other => panic!("{other:?}"),
        };
        drop(t);
        match p1.tunn.lock().unwrap().decapsulate(None, &data, &mut b) {
            R::WriteToTunnelV6(d, src) => {
                assert_eq!(src, me);
                assert_eq!(d, &packet[..]);
                assert!(admits(&p2.fact, d) || admits(&p1.fact, d));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !data.windows(packet.len()).any(|w| w == &packet[..]),
            "the datagram does not carry the packet in clear"
        );
    }
}
