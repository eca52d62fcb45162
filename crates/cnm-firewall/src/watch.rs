//! The watcher: a thread that reads nf_tables change notifications (`NFNLGRP_NFTABLES`) in the
//! firewall's namespace and restores our tables the moment another process deletes, flushes
//! or changes them (`nft flush ruleset`, a firewalld reload, `nft delete table inet cnm`, a
//! rule or element deleted by hand), and the iptables compatibility rule when it goes.
//!
//! How it tells our changes from others': every notification carries the port id of the
//! socket whose transaction caused it (`nlmsg_pid`), and each transaction ends with
//! `NFT_MSG_NEWGEN` carrying the new generation. Notifications from our transaction socket are
//! ignored; a transaction of someone else that touched a table the model wants (`inet cnm`, an
//! owner's `cnm-<owner>`) triggers one restore transaction (every wanted table of every owner,
//! and the compatibility rule). A table the model does not want (one we deleted ourselves when
//! its owner's last element went, or someone else's of a similar name) is never restored. Should the
//! notification queue overflow (`ENOBUFS`), what was lost is judged by generation: every
//! transaction of ours names the generation it expects (see `Firewall::send`), so we know the
//! generations we made; if any generation since the last one read is not ours, the tables are
//! restored. So an overflow caused by our own large transaction never triggers a restore (and
//! never a loop of them).
//!
//! A dedicated thread (not a task) reacts even when the runtime's threads are busy; it holds
//! only a weak reference to the firewall and stops when the firewall is dropped (the drop
//! sends it a message).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::compat;
use crate::firewall::{Firewall, Inner, newer};
use crate::nftnl::{MsgType, NFNL_SUBSYS_NFTABLES, Table, attr_be32, attr_str};
use crate::ruleset::may_be_ours;
use crate::transport::{NotifySocket, messages};

const NLMSG_NOOP: u16 = 1;
/// At most this many restores (or compatibility repairs) per second; beyond, someone keeps
/// rewriting our tables (say a second cnm on the same namespace) and we slow down rather than
/// fight at full speed.
const RESTORES_PER_SECOND: usize = 20;

/// Starts the watcher thread. `own` is the port id of the firewall's transaction socket,
/// `generation` the generation when the firewall opened; `alive` is dropped when it exits;
/// `stopped` set (and a poke) stops it while the firewall lives on.
pub(crate) fn spawn(
    weak: Weak<Inner>,
    sock: NotifySocket,
    own: u32,
    generation: u32,
    alive: tokio::sync::watch::Sender<()>,
    stall: Arc<Stall>,
    stopped: Arc<AtomicBool>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("cnm-nft-watch".into())
        .spawn(move || {
            run(weak, sock, own, generation, &stall, &stopped);
            drop(alive);
        })
        .map(drop)
}

/// Tests only: holds the watcher before its next read, so notifications pile up and overflow
/// (see `Firewall::stall_watcher`).
#[derive(Debug)]
pub(crate) struct Stall {
    on: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
    /// True while the watcher waits.
    pub stalled: tokio::sync::watch::Sender<bool>,
}

impl Stall {
    pub fn new() -> Self {
        Self {
            on: std::sync::Mutex::new(false),
            cv: std::sync::Condvar::new(),
            stalled: tokio::sync::watch::Sender::new(false),
        }
    }

    pub fn set(&self, on: bool) {
        *self.on.lock().unwrap_or_else(|p| p.into_inner()) = on;
        self.cv.notify_all();
    }

    fn wait_while_on(&self) {
        let mut on = self.on.lock().unwrap_or_else(|p| p.into_inner());
        if !*on {
            return;
        }
        self.stalled.send_replace(true);
        while *on {
            on = self.cv.wait(on).unwrap_or_else(|p| p.into_inner());
        }
        self.stalled.send_replace(false);
    }
}

/// What the notifications of the transaction being read touched so far.
#[derive(Debug, Default)]
struct Pending {
    /// Tables that may be ours.
    tables: Vec<Table>,
    compat: bool,
}

/// What the notifications read in one go ask for.
#[derive(Debug, Default)]
struct Events {
    /// Someone else changed tables that may be ours; the newest such generation.
    restore: Option<u32>,
    /// Which tables.
    tables: Vec<Table>,
    /// Someone else changed an iptables `filter` table.
    compat: bool,
    /// Notifications were lost; the last generation read before the loss.
    overflow: Option<u32>,
    /// When the first foreign change was read.
    seen: Option<Instant>,
    /// The firewall was dropped.
    stop: bool,
}

fn run(
    weak: Weak<Inner>,
    sock: NotifySocket,
    own: u32,
    mut verified: u32,
    stall: &Stall,
    stopped: &AtomicBool,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut pending = Pending::default();
    let mut recent: VecDeque<Instant> = VecDeque::new();
    loop {
        stall.wait_while_on();
        let mut ev = Events::default();
        let mut wait = true;
        loop {
            match sock.recv(&mut buf, wait) {
                Ok(None) => break,
                Ok(Some(n)) if n > buf.len() => {
                    // truncated: treat as lost
                    ev.overflow.get_or_insert(verified);
                    ev.seen.get_or_insert_with(Instant::now);
                    pending = Pending::default();
                }
                Ok(Some(_)) => parse(&buf, own, &mut verified, &mut pending, &mut ev),
                Err(e) if e.raw_os_error() == Some(105) => {
                    // ENOBUFS: the queue overflowed and notifications were dropped
                    ev.overflow.get_or_insert(verified);
                    ev.seen.get_or_insert_with(Instant::now);
                    pending = Pending::default();
                }
                Err(e) => {
                    error!(error = %e, "reading nftables notifications failed: the firewall no longer heals itself");
                    return;
                }
            }
            wait = false;
        }
        if ev.stop && (weak.strong_count() == 0 || stopped.load(Ordering::SeqCst)) {
            return;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        react(
            &Firewall::from_inner(inner),
            &ev,
            &mut verified,
            &mut recent,
        );
    }
}

/// Reads one datagram of notifications.
fn parse(buf: &[u8], own: u32, verified: &mut u32, pending: &mut Pending, ev: &mut Events) {
    for (ty, _, _, pid, payload) in messages(buf) {
        if ty == NLMSG_NOOP && pid == own {
            ev.stop = true;
            continue;
        }
        if ty >> 8 != NFNL_SUBSYS_NFTABLES || payload.len() < 4 {
            continue;
        }
        let (family, attrs) = (payload[0], &payload[4..]);
        if ty & 0xff == MsgType::NewGen as u16 {
            let Some(g) = attr_be32(attrs, 1) else {
                continue;
            };
            if newer(g, *verified) {
                if pid != own && (!pending.tables.is_empty() || pending.compat) {
                    if !pending.tables.is_empty() {
                        ev.restore = Some(g);
                        for t in pending.tables.drain(..) {
                            if !ev.tables.contains(&t) {
                                ev.tables.push(t);
                            }
                        }
                    }
                    ev.compat |= pending.compat;
                    ev.seen.get_or_insert_with(Instant::now);
                }
                *verified = g;
            }
            *pending = Pending::default();
        } else if pid != own {
            let table = attr_str(attrs, 1).unwrap_or("");
            if may_be_ours(family, table) {
                let t = Table {
                    family,
                    name: table.to_string().into(),
                };
                if !pending.tables.contains(&t) {
                    pending.tables.push(t);
                }
            } else if compat::concerns(family, table) {
                pending.compat = true;
            }
        }
    }
}

/// Waits if more than [`RESTORES_PER_SECOND`] restores happened in the last second.
fn rate_limit(recent: &mut VecDeque<Instant>) {
    let now = Instant::now();
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        recent.pop_front();
    }
    if recent.len() >= RESTORES_PER_SECOND
        && let Some(first) = recent.front()
    {
        let wait = Duration::from_secs(1).saturating_sub(now.duration_since(*first));
        warn!(
            ?wait,
            "another process keeps changing cnm's nftables tables: slowing down restores"
        );
        std::thread::sleep(wait);
    }
    recent.push_back(Instant::now());
}

fn react(fw: &Firewall, ev: &Events, verified: &mut u32, recent: &mut VecDeque<Instant>) {
    if ev.restore.is_none() && !ev.compat && ev.overflow.is_none() || fw.healing_paused() {
        return;
    }
    // restores and compatibility repairs alike: never a loop at full speed with another
    // program that reacts to our changes as we react to its own
    rate_limit(recent);
    let mut st = fw.lock_blocking();
    if Firewall::is_loading_now(&st) {
        // the restored model is committed whole by finish_loading, which replaces whatever
        // is there by then
        if ev.overflow.is_some() {
            if let Ok(g) = fw.current_generation() {
                *verified = g;
            }
            fw.record_healing(|h| h.overflows += 1);
        }
        return;
    }
    // an operation that found the tables gone may have restored them already; a change to
    // tables the model does not want (any more) is none of our business
    let mut restore = ev
        .restore
        .is_some_and(|g| !Firewall::replaced_after(&st, g))
        && fw.wants_any(&ev.tables);
    if let Some(from) = ev.overflow {
        match fw.current_generation() {
            Ok(now) => {
                if !Firewall::all_own(&st, from, now) {
                    warn!(
                        from,
                        now, "nftables notifications were lost: restoring the ruleset"
                    );
                    restore = true;
                } else {
                    debug!(from, now, "nftables notifications lost, all of them ours");
                }
                if newer(now, *verified) {
                    *verified = now;
                }
            }
            Err(e) => {
                warn!(error = %e, "nftables notifications lost and the generation unknown: restoring");
                restore = true;
            }
        }
    }
    if restore {
        match fw.restore(
            &mut st,
            "restore the ruleset after a change by another process",
        ) {
            Ok(false) => debug!("nothing to restore: no table is wanted"),
            Ok(true) => {
                let took = ev.seen.map(|t| t.elapsed());
                let generation = Firewall::last_generation(&st);
                info!(?took, ?generation, "nftables tables restored");
                fw.record_healing(|h| {
                    h.restores += 1;
                    h.last_restore = took;
                    h.last_generation = generation;
                });
            }
            Err(e) => error!(error = %e, "restoring the nftables tables failed"),
        }
    } else if ev.compat && fw.compat_wanted(&st) {
        match fw.repair_compat(&mut st) {
            Ok(true) => {
                info!("iptables compatibility rule restored");
                fw.record_healing(|h| h.compat_repairs += 1);
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "restoring the iptables compatibility rule failed"),
        }
    }
    if ev.overflow.is_some() {
        // counted once handled, restore included
        fw.record_healing(|h| h.overflows += 1);
    }
}
