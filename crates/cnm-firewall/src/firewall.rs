//! The `Firewall` handle: the model, the serialisation of transactions, and self-healing.
//!
//! Every operation takes the transaction lock, then plans, commits and applies on a blocking
//! thread (`run`), so the model and the kernel change together even if the caller goes away.
//! The watcher thread (`crate::watch`) takes the same lock to restore the tables, so an
//! operation that arrives while the tables are missing waits for the restore instead of
//! failing; one that raced ahead of the watcher and hit `ENOENT` restores and retries itself.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cnm_sandbox::{IpFamily, NetNs};
use tokio::sync::{Mutex, watch};
use tracing::{debug, info_span, warn};

use crate::FirewallError;
use crate::compat::{self, CompatOps};
use crate::model::{self, Elements, EndpointPort, Model, NetworkRules, PortMapping};
use crate::nftnl::{Batch, elem_size};
use crate::ruleset::{self, CHAINS, SetName, TABLES};
use crate::transport::{NOTIFY_BUFFER, NfSocket, NotifySocket};

/// `ERESTART`: the batch named a generation that is no longer current.
const ERESTART: i32 = 85;
/// `ENOENT`: a table, set or element the batch refers to is gone.
const ENOENT: i32 = 2;
/// How often a transaction is retried when other processes keep committing in between.
const MAX_RESTARTS: usize = 16;
/// Bytes of elements per `NFTA_SET_ELEM_LIST_ELEMENTS` nest: well under the u16 attribute
/// length (65535), whatever the element size.
const LIST_BUDGET: usize = 32 * 1024;
/// How many of our own generations are remembered (to tell, after a notification overflow,
/// whether every transaction we missed was ours).
const OWN_GENERATIONS: usize = 4096;

/// What one transaction changes in our tables.
pub(crate) enum Change {
    /// For each table: `add table` + `delete table` + the whole table. Works whether or not
    /// it exists, and replaces it atomically.
    Replace(Elements),
    /// Delete then add exactly these elements.
    Elements { del: Elements, add: Elements },
    /// Nothing in our tables (a transaction for the compatibility rule alone).
    Nothing,
}

impl Change {
    fn added(add: Elements) -> Self {
        Self::Elements {
            del: Elements::new(),
            add,
        }
    }

    fn deleted(del: Elements) -> Self {
        Self::Elements {
            del,
            add: Elements::new(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Replace(_) => false,
            Self::Elements { del, add } => del.is_empty() && add.is_empty(),
            Self::Nothing => true,
        }
    }
}

/// What a transaction does to the iptables compatibility rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compat {
    Keep,
    Ensure,
    Remove,
}

/// How the firewall healed itself so far (see [`Firewall::healing`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Healing {
    /// Full restores of the tables after someone else deleted, flushed or changed them (by
    /// the watcher, or by an operation that found them gone).
    pub restores: u64,
    /// Re-insertions of the iptables compatibility rule after someone removed it.
    pub compat_repairs: u64,
    /// For the last restore by the watcher: from reading the foreign change's notification
    /// to the kernel's ack of the restoring transaction (`None` for a restore by an operation).
    pub last_restore: Option<Duration>,
    /// The ruleset generation the last restore committed.
    pub last_generation: Option<u32>,
    /// Times notifications were lost (`ENOBUFS`) and the generations checked instead.
    pub overflows: u64,
}

/// State only the holder of the transaction lock reads or changes.
pub(crate) struct TxState {
    /// The generation we believe current (`None`: ask the kernel first).
    generation: Option<u32>,
    /// Generations our own transactions produced, most recent last.
    own: VecDeque<u32>,
    /// Restoring after a restart: operations only fill the model (see [`Firewall::loading`]).
    loading: bool,
    /// The compatibility rule is wanted (and restored with the tables).
    compat_wanted: bool,
    /// The generation of our last full replace of the tables.
    last_replace: Option<u32>,
}

pub(crate) struct Inner {
    ns: NetNs,
    socket: Arc<NfSocket>,
    /// Where the watcher listens (poked when the firewall is dropped, so that it stops).
    watcher: u32,
    /// Serialises transactions: held from planning to applying, so two operations never
    /// interleave and every change derives from the model, never read back from the kernel.
    tx: Arc<Mutex<TxState>>,
    /// The model, locked briefly (never across an await), so `render` can read it without a
    /// copy per operation. Only the holder of `tx` changes it.
    model: std::sync::Mutex<Model>,
    transactions: AtomicU64,
    healing: watch::Sender<Healing>,
    /// Tests only: no restore at all (see [`Firewall::pause_healing`]).
    paused: AtomicBool,
    /// Closed when the watcher thread exits.
    watcher_alive: watch::Receiver<()>,
    /// Tests only: holds the watcher (see [`Firewall::stall_watcher`]).
    stall: Arc<crate::watch::Stall>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stall.set(false);
        if let Err(e) = self.socket.poke(self.watcher) {
            warn!(error = %e, "failed to stop the nftables watcher; it stops at the next notification");
        }
    }
}

/// cnm's nftables firewall in one network namespace (the "host" namespace of a controller):
/// `table inet cnm`, `table bridge cnm`, and the iptables compatibility rule.
///
/// Cheap to clone; all clones share the model and serialise their transactions. A watcher
/// thread restores the tables (in one transaction, within milliseconds) whenever another
/// process deletes, flushes or changes them, and the compatibility rule when it goes; it stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("netns", &self.inner.ns.id())
            .finish_non_exhaustive()
    }
}

fn errno(e: &FirewallError) -> Option<i32> {
    match e {
        FirewallError::Kernel { source, .. } | FirewallError::Io { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    }
}

/// Whether generation `a` comes after `b` (generations wrap around).
pub(crate) fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The generation after `g` (the kernel skips 0 when it wraps).
fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

impl Firewall {
    /// Opens the netlink sockets in `ns`, starts watching, and installs the tables, replacing
    /// any previous ones (one transaction). The caller then adds its networks and ports.
    pub async fn new(ns: &NetNs) -> Result<Firewall, FirewallError> {
        let fw = Self::open(ns, false, NOTIFY_BUFFER).await?;
        fw.reconcile().await?;
        Ok(fw)
    }

    /// Like [`Firewall::new`], but fail-closed for a restart: nothing is sent to the kernel
    /// until [`Firewall::finish_loading`]. Until then operations only fill the model (they
    /// succeed without a transaction), and the tables left by the previous run keep filtering;
    /// `finish_loading` then replaces them with the whole desired state in one transaction,
    /// so no packet ever meets a half-restored ruleset.
    pub async fn loading(ns: &NetNs) -> Result<Firewall, FirewallError> {
        Self::open(ns, true, NOTIFY_BUFFER).await
    }

    /// Tests only: [`Firewall::new`] with a notification buffer of `bytes`, so small that
    /// notifications overflow (`ENOBUFS`) and the recovery from lost notifications shows.
    #[doc(hidden)]
    pub async fn with_notify_buffer(ns: &NetNs, bytes: usize) -> Result<Firewall, FirewallError> {
        let fw = Self::open(ns, false, bytes).await?;
        fw.reconcile().await?;
        Ok(fw)
    }

    async fn open(
        ns: &NetNs,
        loading: bool,
        notify_buffer: usize,
    ) -> Result<Firewall, FirewallError> {
        let op = "open netfilter sockets";
        let (socket, notify) = ns
            .run(move || -> io::Result<(NfSocket, NotifySocket)> {
                // subscribed first: no change made after the first transaction goes unseen
                let notify = NotifySocket::open(notify_buffer)?;
                Ok((NfSocket::open()?, notify))
            })
            .await
            .map_err(|source| FirewallError::Namespace {
                op: op.into(),
                source,
            })?
            .map_err(|e| FirewallError::io(op, e))?;
        let socket = Arc::new(socket);
        let (alive, watcher_alive) = watch::channel(());
        let stall = Arc::new(crate::watch::Stall::new());
        let generation = {
            let s = socket.clone();
            tokio::task::spawn_blocking(move || s.generation())
                .await
                .map_err(|e| FirewallError::io("join the netlink reader", io::Error::other(e)))?
                .map_err(|e| FirewallError::io("read the ruleset generation", e))?
        };
        let inner = Arc::new(Inner {
            ns: ns.clone(),
            watcher: notify.portid(),
            socket,
            tx: Arc::new(Mutex::new(TxState {
                generation: Some(generation),
                own: VecDeque::new(),
                loading,
                compat_wanted: false,
                last_replace: None,
            })),
            model: std::sync::Mutex::new(Model::default()),
            transactions: AtomicU64::new(0),
            healing: watch::Sender::new(Healing::default()),
            paused: AtomicBool::new(false),
            watcher_alive,
            stall: stall.clone(),
        });
        crate::watch::spawn(
            Arc::downgrade(&inner),
            notify,
            inner.socket.portid(),
            generation,
            alive,
            stall,
        )
        .map_err(|e| FirewallError::io("start the nftables watcher thread", e))?;
        Ok(Firewall { inner })
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Firewall { inner }
    }

    /// Commits the whole model gathered while loading, in one transaction that replaces the
    /// previous run's tables (and adds the compatibility rule if it was asked for). A no-op
    /// for a firewall that is not loading.
    pub async fn finish_loading(&self) -> Result<(), FirewallError> {
        self.run(|fw, st| {
            if !st.loading {
                return Ok(());
            }
            st.loading = false;
            let r = fw.restore(st, "install the restored ruleset");
            if r.is_err() {
                st.loading = true;
            }
            r
        })
        .await
    }

    /// The namespace this firewall programs.
    pub fn netns(&self) -> &NetNs {
        &self.inner.ns
    }

    /// Installs a network's filtering and masquerading (one transaction).
    pub async fn add_network(&self, net: &NetworkRules) -> Result<(), FirewallError> {
        let net = net.clone();
        self.run(move |fw, st| {
            let add = fw.model().plan_add_network(&net)?;
            fw.commit(
                st,
                &format!("add network {}", net.id),
                Change::added(add),
                Compat::Keep,
            )?;
            fw.model().apply_add_network(&net);
            Ok(())
        })
        .await
    }

    /// Removes a network and every port its endpoints published or guarded: only its own
    /// elements (one transaction).
    pub async fn remove_network(&self, id: &str) -> Result<(), FirewallError> {
        let id = id.to_string();
        self.run(move |fw, st| {
            let del = fw.model().plan_remove_network(&id)?;
            fw.commit(
                st,
                &format!("remove network {id}"),
                Change::deleted(del),
                Compat::Keep,
            )?;
            fw.model().apply_remove_network(&id);
            Ok(())
        })
        .await
    }

    /// Publishes ports of an endpoint on a network (one transaction). Calling it again for
    /// the same endpoint adds more mappings. The batch holds only the new elements, so its
    /// cost does not depend on how many other ports are published; a large publication is
    /// split over several messages of the same transaction.
    pub async fn add_port_mappings(
        &self,
        network_id: &str,
        endpoint_id: &str,
        mappings: &[PortMapping],
    ) -> Result<(), FirewallError> {
        let (network_id, endpoint_id, mappings) = (
            network_id.to_string(),
            endpoint_id.to_string(),
            mappings.to_vec(),
        );
        self.run(move |fw, st| {
            let add = fw
                .model()
                .plan_add_mappings(&network_id, &endpoint_id, &mappings)?;
            if mappings.is_empty() {
                return Ok(());
            }
            fw.commit(
                st,
                &format!("publish ports of endpoint {endpoint_id}"),
                Change::added(add),
                Compat::Keep,
            )?;
            fw.model()
                .apply_add_mappings(&network_id, &endpoint_id, &mappings);
            Ok(())
        })
        .await
    }

    /// Unpublishes every port of an endpoint: deletes exactly its elements (one transaction;
    /// none when the endpoint published nothing).
    pub async fn remove_port_mappings(&self, endpoint_id: &str) -> Result<(), FirewallError> {
        let endpoint_id = endpoint_id.to_string();
        self.run(move |fw, st| {
            let Some(del) = fw.model().plan_remove_endpoint(&endpoint_id) else {
                return Ok(());
            };
            fw.commit(
                st,
                &format!("unpublish ports of endpoint {endpoint_id}"),
                Change::deleted(del),
                Compat::Keep,
            )?;
            fw.model().apply_remove_endpoint(&endpoint_id);
            Ok(())
        })
        .await
    }

    /// Guards an endpoint's bridge port (anti-spoofing, one small transaction): from then on
    /// frames entering the bridge through `port.port` must carry the endpoint's MAC and
    /// addresses. Call it before the port exists, so that no frame ever passes unchecked.
    pub async fn add_endpoint(&self, port: &EndpointPort) -> Result<(), FirewallError> {
        let port = port.clone();
        self.run(move |fw, st| {
            let add = fw.model().plan_add_port(&port)?;
            fw.commit(
                st,
                &format!("guard port {} of endpoint {}", port.port, port.endpoint_id),
                Change::added(add),
                Compat::Keep,
            )?;
            fw.model().apply_add_port(&port);
            Ok(())
        })
        .await
    }

    /// Forgets an endpoint: its guarded port and its published ports, in one transaction
    /// (none when the firewall knows neither). Call it once the port is gone: a port left
    /// without its elements would pass unchecked.
    pub async fn remove_endpoint(&self, endpoint_id: &str) -> Result<(), FirewallError> {
        let endpoint_id = endpoint_id.to_string();
        self.run(move |fw, st| {
            let Some(del) = fw.model().plan_remove_endpoint_all(&endpoint_id) else {
                return Ok(());
            };
            fw.commit(
                st,
                &format!("remove endpoint {endpoint_id}"),
                Change::deleted(del),
                Compat::Keep,
            )?;
            let mut m = fw.model();
            m.apply_remove_endpoint(&endpoint_id);
            m.apply_remove_port(&endpoint_id);
            Ok(())
        })
        .await
    }

    /// Drops (`on`) or stops dropping forwarded traffic of `family` that neither comes from
    /// nor goes to a cnm bridge: for a host whose forwarding cnm itself turned on, so that it
    /// does not become a router between its other interfaces. One transaction when it changes.
    pub async fn set_forward_drop(&self, family: IpFamily, on: bool) -> Result<(), FirewallError> {
        let v6 = family == IpFamily::V6;
        self.run(move |fw, st| {
            let (add, del) = fw.model().plan_forward_drop(v6, on);
            fw.commit(
                st,
                &format!(
                    "{} forwarded {} traffic that is not cnm's",
                    if on { "drop" } else { "stop dropping" },
                    if v6 { "IPv6" } else { "IPv4" }
                ),
                Change::Elements { del, add },
                Compat::Keep,
            )?;
            fw.model().apply_forward_drop(v6, on);
            Ok(())
        })
        .await
    }

    /// Re-applies the whole desired ruleset in one transaction (recreating the tables whether
    /// or not they exist, and the compatibility rule if wanted), which also drops anything no
    /// longer in the model.
    pub async fn reconcile(&self) -> Result<(), FirewallError> {
        self.run(|fw, st| fw.restore(st, "reconcile")).await
    }

    /// The whole desired ruleset as nft text (`nft -f` accepts it).
    pub fn render(&self) -> String {
        ruleset::render(&self.model().elements())
    }

    /// The number of transactions committed so far (restores included).
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }

    /// How the firewall healed itself so far; the receiver sees each restore as it happens.
    pub fn healing(&self) -> watch::Receiver<Healing> {
        self.inner.healing.subscribe()
    }

    /// Tests only: while paused, nothing restores the tables (neither the watcher nor an
    /// operation that finds them gone), so a test can show what happens without them.
    #[doc(hidden)]
    pub fn pause_healing(&self, paused: bool) {
        self.inner.paused.store(paused, Ordering::SeqCst);
    }

    /// Tests only: a receiver whose `changed()` fails once the watcher thread has exited
    /// (it exits when the last clone of the firewall is dropped).
    #[doc(hidden)]
    pub fn watcher_alive(&self) -> watch::Receiver<()> {
        self.inner.watcher_alive.clone()
    }

    /// Tests only: `true` holds the watcher before its next read (returns once it waits), so
    /// notifications pile up and overflow; `false` lets it go on.
    #[doc(hidden)]
    pub async fn stall_watcher(&self, on: bool) -> Result<(), FirewallError> {
        self.inner.stall.set(on);
        if on {
            let mut stalled = self.inner.stall.stalled.subscribe();
            // the watcher is blocked reading: a message it ignores wakes it
            self.inner
                .socket
                .poke(self.inner.watcher)
                .map_err(|e| FirewallError::io("wake the nftables watcher", e))?;
            stalled.wait_for(|s| *s).await.map_err(|e| {
                FirewallError::io("stall the nftables watcher", io::Error::other(e))
            })?;
        }
        Ok(())
    }

    pub(crate) fn healing_paused(&self) -> bool {
        self.inner.paused.load(Ordering::SeqCst)
    }

    /// Coexistence with Docker: if this namespace has an iptables-nft `filter`/`FORWARD`
    /// chain (IPv4 or IPv6), whose DROP policy would be final for packets cnm accepted, makes
    /// sure it starts with our rule
    /// `-m mark --mark 0x1000000/0x1000000 -m comment --comment cnm -j ACCEPT` (inserted over
    /// netlink, at the top; cnm's forward chain sets [`crate::FORWARD_MARK`] on everything it
    /// accepts). From then on the rule is restored with the tables, and when someone removes
    /// it or creates such a chain later. Idempotent; never touches other rules. Returns
    /// whether the rule is in place somewhere (false: no such chain, nothing to do yet).
    pub async fn ensure_iptables_compat(&self) -> Result<bool, FirewallError> {
        self.run(|fw, st| {
            st.compat_wanted = true;
            if st.loading {
                return Ok(true);
            }
            let ops = fw.commit(
                st,
                "install the iptables compatibility rule",
                Change::Nothing,
                Compat::Ensure,
            )?;
            Ok(!ops.insert.is_empty() || ops.present > 0)
        })
        .await
    }

    /// Removes the rules added by [`Firewall::ensure_iptables_compat`] and stops restoring
    /// them; returns whether there was one.
    pub async fn remove_iptables_compat(&self) -> Result<bool, FirewallError> {
        self.run(|fw, st| {
            st.compat_wanted = false;
            if st.loading {
                return Ok(false);
            }
            let ops = fw.commit(
                st,
                "remove the iptables compatibility rule",
                Change::Nothing,
                Compat::Remove,
            )?;
            Ok(!ops.delete.is_empty())
        })
        .await
    }

    /// Deletes the conntrack entries of `proto`/`port` (and destination `dst` when given) in
    /// this namespace, so a re-published UDP port reaches its new container at once.
    /// Returns how many entries were deleted.
    pub async fn flush_conntrack(
        &self,
        proto: cnm_types::Protocol,
        port: u16,
        dst: Option<std::net::IpAddr>,
    ) -> Result<usize, FirewallError> {
        crate::conntrack::flush_conntrack(&self.inner.ns, proto, port, dst).await
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        // a panic while planning or applying cannot leave a half-applied model: planning does
        // not mutate, and applying is pure bookkeeping without fallible steps
        self.inner
            .model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` holding the transaction lock, on a blocking thread (netlink sends block).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Firewall, &mut TxState) -> Result<T, FirewallError> + Send + 'static,
    ) -> Result<T, FirewallError> {
        let guard = self.inner.tx.clone().lock_owned().await;
        let fw = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = guard;
            f(&fw, &mut guard)
        })
        .await
        .map_err(|e| FirewallError::io("join the nftables transaction", io::Error::other(e)))?
    }

    /// Takes the transaction lock from a thread outside the runtime (the watcher).
    pub(crate) fn lock_blocking(&self) -> tokio::sync::OwnedMutexGuard<TxState> {
        self.inner.tx.clone().blocking_lock_owned()
    }

    /// Sends `change` as one transaction (nothing when it is empty; nothing at all while
    /// loading). When an element change fails because a table, set or element is gone
    /// (someone flushed or deleted it before the watcher restored it), restores the whole
    /// ruleset and retries once, inside the same lock. The caller applies the change to the
    /// model only on success, so a refused batch leaves the model unchanged.
    fn commit(
        &self,
        st: &mut TxState,
        op: &str,
        change: Change,
        compat: Compat,
    ) -> Result<CompatOps, FirewallError> {
        if st.loading {
            return Ok(CompatOps::default());
        }
        match self.send(st, op, &change, compat) {
            Err(e)
                if errno(&e) == Some(ENOENT)
                    && matches!(change, Change::Elements { .. })
                    && !self.healing_paused() =>
            {
                warn!(op, error = %e, "nftables tables missing: restoring them before retrying");
                self.restore(st, &format!("restore the ruleset for {op}"))?;
                let generation = st.generation;
                self.record_healing(|h| {
                    h.restores += 1;
                    h.last_restore = None;
                    h.last_generation = generation;
                });
                self.send(st, op, &change, compat)
            }
            r => r,
        }
    }

    /// Replaces every table with the model (and the compatibility rule if wanted): one
    /// transaction.
    pub(crate) fn restore(&self, st: &mut TxState, op: &str) -> Result<(), FirewallError> {
        let elements = self.model().elements();
        let compat = if st.compat_wanted {
            Compat::Ensure
        } else {
            Compat::Keep
        };
        self.send(st, op, &Change::Replace(elements), compat)?;
        st.last_replace = st.generation;
        Ok(())
    }

    /// One transaction, named after the generation we believe current: if another process
    /// committed in between, the kernel refuses it (`ERESTART`) and it is re-planned (the
    /// compatibility rule's state re-read) for the new generation. So each of our commits has
    /// a known generation, which lets the watcher tell its own transactions from others'.
    fn send(
        &self,
        st: &mut TxState,
        op: &str,
        change: &Change,
        compat: Compat,
    ) -> Result<CompatOps, FirewallError> {
        let span = info_span!("nft_transaction", op);
        let _entered = span.enter();
        let sock = &self.inner.socket;
        for _ in 0..MAX_RESTARTS {
            let g = match st.generation {
                Some(g) => g,
                None => sock.generation().map_err(|e| {
                    FirewallError::io(format!("read the ruleset generation for {op}"), e)
                })?,
            };
            let ops = match compat {
                Compat::Keep => Ok(CompatOps::default()),
                Compat::Ensure => compat::plan_ensure(sock),
                Compat::Remove => compat::plan_remove(sock),
            }
            .map_err(|e| {
                FirewallError::io(format!("look for the iptables FORWARD chains for {op}"), e)
            })?;
            if change.is_empty() && ops.is_empty() {
                st.generation = Some(g);
                return Ok(ops);
            }
            let first = sock.seqs(0);
            let (bytes, described) = encode(change, &ops, first, Some(g));
            sock.seqs(described.len() as u32 + 2);
            match sock.transact(op, &bytes, &described) {
                Ok(()) => {
                    let n = next_generation(g);
                    st.generation = Some(n);
                    st.own.push_back(n);
                    if st.own.len() > OWN_GENERATIONS {
                        st.own.pop_front();
                    }
                    self.inner.transactions.fetch_add(1, Ordering::Relaxed);
                    debug!(generation = n, messages = described.len(), "applied");
                    return Ok(ops);
                }
                Err(e) if errno(&e) == Some(ERESTART) => {
                    debug!("another transaction committed first: re-planning");
                    st.generation = None;
                }
                Err(e) => {
                    // an aborted batch leaves the generation as it was, but we may have
                    // raced another commit: ask next time
                    st.generation = None;
                    return Err(e);
                }
            }
        }
        Err(FirewallError::Conflict {
            op: op.to_string(),
            object: "the nftables ruleset".into(),
            reason: format!("other processes committed before each of {MAX_RESTARTS} attempts"),
        })
    }

    /// Whether every generation after `from` up to `to` was one of our transactions.
    pub(crate) fn all_own(st: &TxState, from: u32, to: u32) -> bool {
        let span = to.wrapping_sub(from);
        if span as usize > st.own.len() {
            return span == 0;
        }
        (1..=span).all(|i| {
            let g = from.wrapping_add(i);
            g == 0 || st.own.contains(&g)
        })
    }

    /// Whether our last full replace came after generation `g`.
    pub(crate) fn replaced_after(st: &TxState, g: u32) -> bool {
        st.last_replace.is_some_and(|r| newer(r, g))
    }

    pub(crate) fn is_loading(st: &TxState) -> bool {
        st.loading
    }

    pub(crate) fn compat_wanted(st: &TxState) -> bool {
        st.compat_wanted
    }

    pub(crate) fn current_generation(&self) -> io::Result<u32> {
        self.inner.socket.generation()
    }

    /// Re-inserts the compatibility rule where it is missing (a transaction only if needed).
    pub(crate) fn repair_compat(&self, st: &mut TxState) -> Result<bool, FirewallError> {
        let ops = self.commit(
            st,
            "repair the iptables compatibility rule",
            Change::Nothing,
            Compat::Ensure,
        )?;
        Ok(!ops.insert.is_empty())
    }

    pub(crate) fn record_healing(&self, f: impl FnOnce(&mut Healing)) {
        self.inner.healing.send_modify(f);
    }

    pub(crate) fn last_generation(st: &TxState) -> Option<u32> {
        st.generation
    }
}

/// Encodes a change (and the compatibility rule operations) as one nfnetlink batch.
pub(crate) fn encode(
    change: &Change,
    compat: &CompatOps,
    first_seq: u32,
    genid: Option<u32>,
) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut b = Batch::new(first_seq, genid);
    match change {
        Change::Replace(elements) => {
            // nft numbers the named sets of every table first; rules refer to them by id
            for set in SetName::ALL {
                b.declare_set(set.table(), set.name());
            }
            let rules = ruleset::rules();
            for t in TABLES {
                b.add_table(t);
                b.delete_table(t);
                b.add_table(t);
                for c in CHAINS.iter().filter(|c| c.table == t) {
                    b.add_chain(t, c.name, c.hook.map(|h| (h.num, h.prio, h.ty)));
                }
                for set in SetName::ALL.into_iter().filter(|s| s.table() == t) {
                    b.add_set(t, &set.spec());
                    if let Some(elems) = elements.get(&set).filter(|e| !e.is_empty()) {
                        push_elems(&mut b, set, elems, false);
                    }
                }
                for rule in rules.iter().filter(|r| r.table == t) {
                    b.add_rule(t, rule.chain, &rule.exprs, None, false, rule.text);
                }
            }
        }
        Change::Elements { del, add } => {
            for (set, elems) in del {
                push_elems(&mut b, *set, elems, true);
            }
            for (set, elems) in add {
                push_elems(&mut b, *set, elems, false);
            }
        }
        Change::Nothing => {}
    }
    compat.encode(&mut b);
    b.finish()
}

/// Adds (or deletes) elements of a set, in as many messages as needed to keep each element
/// list under [`LIST_BUDGET`] bytes.
fn push_elems(
    b: &mut Batch,
    set: SetName,
    elems: &std::collections::BTreeSet<model::Element>,
    delete: bool,
) {
    let mut chunk = Vec::new();
    let mut first: Vec<&model::Element> = Vec::new();
    let mut size = 0;
    let flush = |b: &mut Batch, chunk: &mut Vec<_>, first: &mut Vec<&model::Element>| {
        if chunk.is_empty() {
            return;
        }
        let mut text = first
            .iter()
            .take(16)
            .map(|e| e.text())
            .collect::<Vec<_>>()
            .join(", ");
        if chunk.len() > 16 {
            text.push_str(&format!(", … ({} elements)", chunk.len()));
        }
        b.set_elems(set.table(), set.name(), None, chunk, delete, text);
        chunk.clear();
        first.clear();
    };
    for e in elems {
        let bytes = set.elem_bytes(e);
        let n = elem_size(&bytes);
        if size + n > LIST_BUDGET {
            flush(b, &mut chunk, &mut first);
            size = 0;
        }
        size += n;
        chunk.push(bytes);
        first.push(e);
    }
    flush(b, &mut chunk, &mut first);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkRules;

    /// (type, payload) of each message in a batch, BEGIN and END excluded.
    fn split(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let len = u32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(bytes[i + 4..i + 6].try_into().unwrap());
            out.push((ty, bytes[i + 16..i + len].to_vec()));
            i += len;
        }
        out.retain(|(ty, _)| *ty != 0x10 && *ty != 0x11);
        out
    }

    fn nft_reference() -> Vec<(u16, Vec<u8>)> {
        include_str!("../testdata/nft-1.0.6-batch.hex")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (ty, hex) = l.split_once(' ').unwrap();
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                (ty.parse().unwrap(), bytes)
            })
            .collect()
    }

    const NEWCHAIN: u16 = 0xa03;
    const NEWRULE: u16 = 0xa06;
    const NEWSET: u16 = 0xa09;
    const NEWSETELEM: u16 = 0xa0c;

    fn replace(elements: Elements) -> (Vec<u8>, Vec<(u32, String)>) {
        encode(
            &Change::Replace(elements),
            &CompatOps::default(),
            1,
            Some(7),
        )
    }

    #[test]
    fn chains_sets_and_rules_match_nft_byte_for_byte() {
        let (bytes, described) = replace(Elements::new());
        let ours = split(&bytes);
        assert_eq!(ours.len(), described.len());
        // nft's reference has elements in some named sets; compare everything else in order
        let named_elems =
            |(ty, p): &(u16, Vec<u8>)| *ty == NEWSETELEM && !p.windows(7).any(|w| w == b"__set%d");
        let pick = |v: Vec<(u16, Vec<u8>)>| -> Vec<(u16, Vec<u8>)> {
            v.into_iter()
                .filter(|m| [NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM].contains(&m.0))
                .filter(|m| !named_elems(m))
                .collect()
        };
        let ours = pick(ours);
        let theirs = pick(nft_reference());
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "message {i} (type {:#x}) differs", a.0);
        }
    }

    #[test]
    fn set_elements_match_nft_byte_for_byte() {
        use crate::model::{Element, Field};
        let br = Field::ifname(&"br-a".parse().unwrap());
        let v4 = |s: &str| Field::V4(s.parse().unwrap());
        let v6 = |s: &str| Field::V6(s.parse().unwrap());
        let point = |key: Vec<Field>, data: Vec<Field>| Element {
            key,
            key_end: None,
            data,
        };
        let mut elements = Elements::new();
        let mut put = |set, e| {
            elements.entry(set).or_default().insert(e);
        };
        put(SetName::Bridges, point(vec![br], vec![]));
        put(
            SetName::Bridges,
            point(vec![Field::ifname(&"br-b".parse().unwrap())], vec![]),
        );
        put(
            SetName::NoHost,
            point(vec![Field::ifname(&"br-b".parse().unwrap())], vec![]),
        );
        put(SetName::ForwardDrop, point(vec![Field::NfProto(2)], vec![]));
        put(
            SetName::ForwardDrop,
            point(vec![Field::NfProto(10)], vec![]),
        );
        put(SetName::SameBridge, point(vec![br, br], vec![]));
        put(
            SetName::Masq4,
            Element {
                key: vec![br, v4("172.18.0.0")],
                key_end: Some(vec![br, v4("172.18.255.255")]),
                data: vec![],
            },
        );
        // hash sets and maps: single ports, no key end
        put(
            SetName::Published4,
            point(
                vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(80)],
                vec![],
            ),
        );
        put(
            SetName::Published6,
            point(
                vec![v6("fd00:1::2"), Field::Proto(17), Field::Port(53)],
                vec![],
            ),
        );
        put(
            SetName::Dnat4,
            point(
                vec![v4("127.0.0.1"), Field::Proto(17), Field::Port(53)],
                vec![v4("172.18.0.3"), Field::Port(5353)],
            ),
        );
        put(
            SetName::Dnat4Any,
            point(
                vec![Field::Proto(6), Field::Port(80)],
                vec![v4("172.18.0.3"), Field::Port(8080)],
            ),
        );
        put(
            SetName::Dnat6,
            point(
                vec![v6("fd00::1"), Field::Proto(6), Field::Port(80)],
                vec![v6("fd00:1::2"), Field::Port(8080)],
            ),
        );
        put(
            SetName::Dnat6Any,
            point(
                vec![Field::Proto(132), Field::Port(443)],
                vec![v6("fd00:1::2"), Field::Port(8443)],
            ),
        );
        // interval sets and maps: real ranges only
        put(
            SetName::Published4Range,
            Element {
                key: vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(8000)],
                key_end: Some(vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(8010)]),
                data: vec![],
            },
        );
        put(
            SetName::Dnat4Range,
            Element {
                key: vec![v4("10.0.0.1"), Field::Proto(6), Field::Port(8000)],
                key_end: Some(vec![v4("10.0.0.1"), Field::Proto(6), Field::Port(8010)]),
                data: vec![v4("172.18.0.2")],
            },
        );
        put(
            SetName::Dnat4AnyRange,
            Element {
                key: vec![Field::Proto(17), Field::Port(5000)],
                key_end: Some(vec![Field::Proto(17), Field::Port(5009)]),
                data: vec![v4("172.18.0.4")],
            },
        );
        // the bridge table's anti-spoofing sets
        let port = Field::ifname(&"veth1234567".parse().unwrap());
        put(SetName::Ports, point(vec![port], vec![]));
        put(
            SetName::OwnMac,
            point(
                vec![port, Field::Mac([0x02, 0x42, 0xac, 0x12, 0, 2])],
                vec![],
            ),
        );
        put(SetName::OwnV4, point(vec![port, v4("172.18.0.2")], vec![]));
        put(SetName::OwnV6, point(vec![port, v6("fd00:1::2")], vec![]));
        let target: std::net::Ipv6Addr = "fd00:1::2".parse().unwrap();
        put(
            SetName::NdTarget,
            point(vec![port, Field::Raw128(u128::from(target))], vec![]),
        );
        let (bytes, _) = replace(elements);
        let elems = |v: Vec<(u16, Vec<u8>)>| -> Vec<Vec<u8>> {
            v.into_iter()
                .filter(|(ty, p)| *ty == NEWSETELEM && !p.windows(7).any(|w| w == b"__set%d"))
                .map(|(_, p)| p)
                .collect()
        };
        let ours = elems(split(&bytes));
        let theirs = elems(nft_reference());
        // the reference also has a masq6 element, which we did not build here
        assert_eq!(ours.len(), 19);
        for m in &ours {
            assert!(
                theirs.contains(m),
                "element message not sent by nft: {m:02x?}"
            );
        }
        assert_eq!(theirs.len(), ours.len() + 1);
    }

    #[test]
    fn large_element_batches_are_split_under_the_attribute_limit() {
        let net = NetworkRules {
            id: "n".into(),
            bridge: "br-n".parse().unwrap(),
            subnets_v4: vec![],
            subnets_v6: vec![],
            icc: true,
            masquerade: true,
            internal: false,
            host_access: false,
            gateway_mode: cnm_types::GatewayMode::Nat,
        };
        let m = PortMapping {
            proto: cnm_types::Protocol::Tcp,
            host_ip: None,
            host_ports: (1, 60000),
            container_ip: "172.18.0.2".parse().unwrap(),
            container_ports: (2, 60001),
        };
        let add = model::mapping_elements(&net, &m);
        assert_eq!(add[&SetName::Dnat4Any].len(), 60000);
        let (bytes, described) = encode(&Change::added(add), &CompatOps::default(), 1, None);
        let msgs = split(&bytes);
        assert_eq!(msgs.len(), described.len());
        assert!(msgs.len() > 60, "{} messages", msgs.len());
        for (_, payload) in &msgs {
            // every attribute of the message (the element list included) fits a u16 length
            assert!(payload.len() < 40 * 1024, "{} bytes", payload.len());
        }
        assert!(described.iter().all(|(_, d)| d.len() < 2048));
    }

    #[test]
    fn generations_wrap() {
        assert!(newer(1, u32::MAX));
        assert!(!newer(5, 5) && newer(6, 5) && !newer(4, 5));
        assert_eq!(next_generation(u32::MAX), 1);
        let st = TxState {
            generation: None,
            own: [6, 7, 9].into_iter().collect(),
            loading: false,
            compat_wanted: false,
            last_replace: Some(9),
        };
        assert!(Firewall::all_own(&st, 5, 7));
        assert!(!Firewall::all_own(&st, 5, 9), "8 was someone else's");
        assert!(Firewall::all_own(&st, 9, 9));
        assert!(Firewall::replaced_after(&st, 8) && !Firewall::replaced_after(&st, 9));
    }
}
