//! The `Firewall` handle: one per network namespace, shared by every owner of rules in it (the
//! firewall's own guards, the bridge fragment, declared fragments); the model, the
//! serialisation of transactions, self-healing.
//!
//! Every operation takes the transaction lock, then plans, commits and applies on a blocking
//! thread (`run`), so the model and the kernel change together even if the caller goes away.
//! The watcher thread (`crate::watch`) takes the same lock to restore the tables, so an
//! operation that arrives while the tables are missing waits for the restore instead of
//! failing; one that raced ahead of the watcher and hit `ENOENT` restores and retries itself.
//!
//! Sockets (and the watcher) are opened by the first transaction that has something to send:
//! a firewall nobody puts rules in never opens anything.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cnm_sandbox::{IpFamily, NetNs};
use tokio::sync::{Mutex, watch};
use tracing::{debug, info_span, warn};

use crate::FirewallError;
use crate::compat::{self, CompatOps};
use crate::fragment::{ElementChange, FragmentSpec};
use crate::model::{
    self, Elements, EndpointMappings, EndpointPort, Model, NetworkRules, Plan, PortMapping, merge,
};
use crate::nftnl::{Batch, Table, elem_size};
use crate::ruleset::may_be_ours;
use crate::table::SetDef;
use crate::transport::{NOTIFY_BUFFER, NfSocket, NotifySocket};

/// `ERESTART`: the batch named a generation that is no longer current.
const ERESTART: i32 = 85;
/// `ENOENT`: a table, set or element the batch refers to is gone.
const ENOENT: i32 = 2;
/// How many times an operation that finds the tables gone restores them and tries again.
const ENOENT_RETRIES: u32 = 5;
/// How often a transaction is retried when other processes keep committing in between.
const MAX_RESTARTS: usize = 16;
/// Bytes of elements per `NFTA_SET_ELEM_LIST_ELEMENTS` nest: well under the u16 attribute
/// length (65535), whatever the element size.
const LIST_BUDGET: usize = 32 * 1024;
/// How many of our own generations are remembered (to tell, after a notification overflow,
/// whether every transaction we missed was ours).
const OWN_GENERATIONS: usize = 4096;

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
    /// The compatibility rule is wanted (and in place while any owner's tables are).
    compat_wanted: bool,
    /// The generation of our last full replace of the tables.
    last_replace: Option<u32>,
}

/// An action waiting for the restored ruleset (see [`Firewall::after_loading`]).
type Deferred = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// The error of a deferred action.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The sockets and the watcher, once opened.
struct Open {
    socket: Arc<NfSocket>,
    /// Where the watcher listens (poked to stop it).
    watcher: u32,
    /// Closed when the watcher thread exits.
    watcher_alive: watch::Receiver<()>,
    /// Tests only: holds the watcher (see [`Firewall::stall_watcher`]).
    stall: Arc<crate::watch::Stall>,
}

pub(crate) struct Inner {
    ns: NetNs,
    notify_buffer: usize,
    open: OnceLock<Open>,
    /// Serialises transactions: held from planning to applying, so two operations never
    /// interleave and every change derives from the model, never read back from the kernel.
    tx: Arc<Mutex<TxState>>,
    /// The model, locked briefly (never across an await), so `render` can read it without a
    /// copy per operation. Only the holder of `tx` changes its elements.
    model: std::sync::Mutex<Model>,
    transactions: AtomicU64,
    /// Operations run (each takes the transaction lock once), see [`Firewall::operations`].
    operations: AtomicU64,
    healing: watch::Sender<Healing>,
    /// Tests only: no restore at all (see [`Firewall::pause_healing`]).
    paused: AtomicBool,
    /// Mirrors `TxState::loading`, for [`Firewall::is_loading`].
    loading: AtomicBool,
    /// The watcher was told to stop (see [`Firewall::stop_watching`]).
    stopped: Arc<AtomicBool>,
    /// Actions waiting for the restored ruleset, in order.
    deferred: std::sync::Mutex<Vec<(String, Deferred)>>,
}

impl Inner {
    fn poke_watcher(&self) {
        if let Some(o) = self.open.get() {
            o.stall.set(false);
            match o.socket.poke(o.watcher) {
                // No socket has the watcher's port id: it has already stopped.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    warn!(error = %e, "failed to stop the nftables watcher; it stops at the next notification")
                }
                Ok(()) => {}
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.poke_watcher();
    }
}

/// cnm's nftables firewall in one network namespace (the "host" namespace of a controller):
/// the firewall's own `table inet cnm` (the loopback guard, the drop of forwarded traffic that
/// is not cnm's), the tables of each owner of rules — the built-in bridge fragment
/// (`table inet cnm-bridge`, `table bridge cnm-bridge`: [`Firewall::add_network`] and the
/// methods after it) and every declared fragment ([`Firewall::fragment`]) — and the iptables
/// compatibility rule.
///
/// One per namespace: a controller makes it and hands it to every driver, so that no driver's
/// transaction rewrites another's rules. Each owner's tables are in the kernel exactly while
/// the owner has elements in them; the firewall's own table while anything is installed (or
/// the drop of foreign forwarded traffic is on); the compatibility rule while any owner's
/// tables are (and it is wanted). With nothing left, nothing of cnm's stays in the kernel.
///
/// Cheap to clone; all clones share the model and serialise their transactions. A watcher
/// thread restores every wanted table (in one transaction, within milliseconds) whenever
/// another process deletes, flushes or changes one, and the compatibility rule when it goes; it
/// stops when the last clone is dropped, or at [`Firewall::stop_watching`].
#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("netns", &self.inner.ns.id())
            .field("open", &self.inner.open.get().is_some())
            .finish_non_exhaustive()
    }
}

/// An owner's part of a [`Firewall`]: its declared sets, maps and chains (see
/// [`crate::FragmentSpec`]). Its changes touch only its own sets, and its own claims.
#[derive(Debug, Clone)]
pub struct Fragment {
    fw: Firewall,
    owner: u16,
    name: String,
}

impl Fragment {
    /// The owner's name (its tables are `cnm-<owner>`).
    pub fn owner(&self) -> &str {
        &self.name
    }

    /// The firewall it is part of.
    pub fn firewall(&self) -> &Firewall {
        &self.fw
    }

    /// Deletes then adds elements of the owner's sets, and claims or releases interfaces: one
    /// transaction holding only those elements (none while loading, or when nothing changes).
    /// The first element creates the owner's tables in the same transaction; deleting the
    /// last one deletes them. Refused, with nothing changed, when an element does not fit its
    /// set, is added while held or deleted while not held.
    pub async fn apply(&self, change: &ElementChange) -> Result<(), FirewallError> {
        let (owner, change, name) = (self.owner, change.clone(), self.name.clone());
        self.fw
            .run(move |fw, st| {
                let delta = fw.model().plan_custom(owner, &change)?;
                fw.change(
                    st,
                    &format!("change the elements of fragment {name}"),
                    delta.del.clone(),
                    delta.add.clone(),
                    |m| m.apply_custom(delta),
                )
            })
            .await
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
    /// The firewall of `ns`, opened on first use: nothing is opened or sent until an operation
    /// has something to send. `loading` starts it fail-closed for a restart (see
    /// [`Firewall::loading`]): what a controller does, committing at the end of its reload.
    pub fn lazy(ns: &NetNs, loading: bool) -> Firewall {
        Self::unopened(ns, loading, NOTIFY_BUFFER)
    }

    /// Opens the netlink sockets in `ns`, starts watching, and removes what a previous run
    /// left of cnm's tables (one transaction, only if there is any). The caller then adds its
    /// networks, ports and fragments.
    pub async fn new(ns: &NetNs) -> Result<Firewall, FirewallError> {
        let fw = Self::unopened(ns, false, NOTIFY_BUFFER);
        fw.reconcile().await?;
        Ok(fw)
    }

    /// Like [`Firewall::new`], but fail-closed for a restart: nothing is sent to the kernel
    /// until [`Firewall::finish_loading`]. Until then operations only fill the model (they
    /// succeed without a transaction), and the tables left by the previous run keep filtering;
    /// `finish_loading` then replaces them with the whole desired state in one transaction,
    /// so no packet ever meets a half-restored ruleset.
    pub async fn loading(ns: &NetNs) -> Result<Firewall, FirewallError> {
        let fw = Self::unopened(ns, true, NOTIFY_BUFFER);
        fw.run(|fw, st| fw.open(st).map(drop)).await?;
        Ok(fw)
    }

    /// Tests only: [`Firewall::new`] with a notification buffer of `bytes`, so small that
    /// notifications overflow (`ENOBUFS`) and the recovery from lost notifications shows.
    #[doc(hidden)]
    pub async fn with_notify_buffer(ns: &NetNs, bytes: usize) -> Result<Firewall, FirewallError> {
        let fw = Self::unopened(ns, false, bytes);
        fw.reconcile().await?;
        Ok(fw)
    }

    fn unopened(ns: &NetNs, loading: bool, notify_buffer: usize) -> Firewall {
        Firewall {
            inner: Arc::new(Inner {
                ns: ns.clone(),
                notify_buffer,
                open: OnceLock::new(),
                tx: Arc::new(Mutex::new(TxState {
                    generation: None,
                    own: VecDeque::new(),
                    loading,
                    compat_wanted: false,
                    last_replace: None,
                })),
                model: std::sync::Mutex::new(Model::default()),
                transactions: AtomicU64::new(0),
                operations: AtomicU64::new(0),
                healing: watch::Sender::new(Healing::default()),
                paused: AtomicBool::new(false),
                loading: AtomicBool::new(loading),
                stopped: Arc::new(AtomicBool::new(false)),
                deferred: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// The sockets, opened (with the watcher) on first use. Runs on a blocking thread holding
    /// the transaction lock, so two callers never open twice.
    fn open(&self, st: &mut TxState) -> Result<&Open, FirewallError> {
        if let Some(o) = self.inner.open.get() {
            return Ok(o);
        }
        let op = "open netfilter sockets";
        let buffer = self.inner.notify_buffer;
        let (socket, notify) = self
            .inner
            .ns
            .run_blocking(move || -> io::Result<(NfSocket, NotifySocket)> {
                // subscribed first: no change made after the first transaction goes unseen
                let notify = NotifySocket::open(buffer)?;
                Ok((NfSocket::open()?, notify))
            })
            .map_err(|source| FirewallError::Namespace {
                op: op.into(),
                source,
            })?
            .map_err(|e| FirewallError::io(op, e))?;
        let generation = socket
            .generation()
            .map_err(|e| FirewallError::io("read the ruleset generation", e))?;
        st.generation = Some(generation);
        let socket = Arc::new(socket);
        let (alive, watcher_alive) = watch::channel(());
        let stall = Arc::new(crate::watch::Stall::new());
        let watcher = notify.portid();
        crate::watch::spawn(
            Arc::downgrade(&self.inner),
            notify,
            socket.portid(),
            generation,
            alive,
            stall.clone(),
            self.inner.stopped.clone(),
        )
        .map_err(|e| FirewallError::io("start the nftables watcher thread", e))?;
        Ok(self.inner.open.get_or_init(|| Open {
            socket,
            watcher,
            watcher_alive,
            stall,
        }))
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Firewall { inner }
    }

    /// Commits the whole model gathered while loading, in one transaction that replaces the
    /// previous run's tables (deleting those of owners with nothing left, and adding or
    /// removing the compatibility rule), then runs the actions deferred until then (see
    /// [`Firewall::after_loading`]). A firewall that has nothing to install and finds nothing
    /// of cnm's in the kernel opens nothing. A no-op for a firewall that is not loading.
    pub async fn finish_loading(&self) -> Result<(), FirewallError> {
        let finished = self
            .run(|fw, st| {
                if !st.loading {
                    return Ok(false);
                }
                let wanted = !fw.model().desired_tables().is_empty();
                if !wanted && fw.inner.open.get().is_none() && !fw.leftovers()? {
                    fw.set_loading(st, false);
                    return Ok(true);
                }
                fw.open(st)?;
                fw.set_loading(st, false);
                let r = fw
                    .stale_tables()
                    .and_then(|extra| fw.replace(st, "install the restored ruleset", extra));
                if let Err(e) = r {
                    fw.set_loading(st, true);
                    return Err(e);
                }
                Ok(true)
            })
            .await?;
        if !finished {
            return Ok(());
        }
        let actions = std::mem::take(&mut *lock(&self.inner.deferred));
        let mut first = None;
        for (what, action) in actions {
            if let Err(source) = action.await {
                let e = FirewallError::AfterLoading { what, source };
                if first.is_none() {
                    first = Some(e);
                } else {
                    warn!(error = %e, "a deferred action failed too");
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn set_loading(&self, st: &mut TxState, loading: bool) {
        st.loading = loading;
        self.inner.loading.store(loading, Ordering::SeqCst);
    }

    /// Whether the firewall is loading (operations only fill the model until
    /// [`Firewall::finish_loading`]).
    pub fn is_loading(&self) -> bool {
        self.inner.loading.load(Ordering::SeqCst)
    }

    /// Runs `action` once the ruleset is in the kernel: at once if the firewall is not
    /// loading, else right after [`Firewall::finish_loading`] committed it (which then
    /// returns the first failure). For what must not happen before the rules exist, such as
    /// turning on forwarding whose drop of foreign traffic is one of those rules.
    pub async fn after_loading<F>(
        &self,
        what: impl Into<String>,
        action: F,
    ) -> Result<(), FirewallError>
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let what = what.into();
        {
            let st = self.inner.tx.lock().await;
            if st.loading {
                lock(&self.inner.deferred).push((what, Box::pin(action)));
                return Ok(());
            }
        }
        action
            .await
            .map_err(|source| FirewallError::AfterLoading { what, source })
    }

    /// Stops the watcher (a controller shutting down): from then on nothing is restored by
    /// itself, even while clones of this handle live on. The tables stay as they are, for the
    /// next controller to adopt.
    pub fn stop_watching(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.poke_watcher();
    }

    /// The namespace this firewall programs.
    pub fn netns(&self) -> &NetNs {
        &self.inner.ns
    }

    /// Declares an owner's fragment (no transaction: its tables come with its first element,
    /// see [`Fragment::apply`]). Declaring the same spec again returns the same owner; a
    /// different spec for a declared owner, or a spec the kernel would refuse, is refused
    /// naming the field and value.
    pub fn fragment(&self, spec: FragmentSpec) -> Result<Fragment, FirewallError> {
        let owner = self.model().declare(&spec)?;
        Ok(Fragment {
            fw: self.clone(),
            owner,
            name: spec.owner().to_string(),
        })
    }

    /// Installs a bridge network's filtering and masquerading (one transaction; with the first
    /// network, the bridge fragment's tables come in it).
    pub async fn add_network(&self, net: &NetworkRules) -> Result<(), FirewallError> {
        self.planned_add(
            format!("add network {}", net.id),
            net.clone(),
            Model::plan_add_network,
            Model::apply_add_network,
        )
        .await
    }

    /// Removes a network and every port its endpoints published or guarded: only its own
    /// elements (one transaction; with the last network, the bridge fragment's tables go).
    pub async fn remove_network(&self, id: &str) -> Result<(), FirewallError> {
        self.planned(
            format!("remove network {id}"),
            id.to_string(),
            |m, id| Ok(Some((m.plan_remove_network(id)?, Elements::new()))),
            |m, id| m.apply_remove_network(id),
        )
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
        self.planned(
            format!("publish ports of endpoint {endpoint_id}"),
            (
                network_id.to_string(),
                endpoint_id.to_string(),
                mappings.to_vec(),
            ),
            |m, (network_id, endpoint_id, mappings)| {
                let add = m.plan_add_mappings(network_id, endpoint_id, mappings)?;
                Ok((!mappings.is_empty()).then(|| (Elements::new(), add)))
            },
            |m, (network_id, endpoint_id, mappings)| {
                m.apply_add_mappings(network_id, endpoint_id, mappings)
            },
        )
        .await
    }

    /// Publishes the ports of many endpoints in one transaction (a restore re-publishing every
    /// endpoint's ports: one trip to the firewall instead of one per endpoint, issue 15; the
    /// bridge publishes a single endpoint's as a batch of one, and an error then names it). Each
    /// endpoint must publish nothing yet; the batch is checked as a whole (a conflict between
    /// two of its endpoints is refused as between two calls) and is made entirely or not at
    /// all.
    pub async fn add_port_mappings_batch(
        &self,
        batch: Vec<EndpointMappings>,
    ) -> Result<(), FirewallError> {
        let batch: Vec<EndpointMappings> = batch
            .into_iter()
            .filter(|e| !e.mappings.is_empty())
            .collect();
        let op = match batch.as_slice() {
            [one] => format!("publish ports of endpoint {}", one.endpoint_id),
            all => format!("publish ports of {} endpoints", all.len()),
        };
        self.planned_batch(
            op,
            batch,
            |m, e| {
                if m.publishes(&e.endpoint_id) {
                    return Err(FirewallError::Conflict {
                        op: "publish ports".into(),
                        object: format!("endpoint {}", e.endpoint_id),
                        reason: "a batch publishes only endpoints that publish nothing yet".into(),
                    });
                }
                m.plan_add_mappings(&e.network_id, &e.endpoint_id, &e.mappings)
            },
            |m, e| m.apply_add_mappings(&e.network_id, &e.endpoint_id, &e.mappings),
            |m, e| m.apply_remove_endpoint(&e.endpoint_id),
        )
        .await
    }

    /// Guards the bridge ports of many endpoints (see [`Firewall::add_endpoint`]) in one
    /// transaction: a restore guarding every endpoint's port again. Checked as a whole, made
    /// entirely or not at all.
    pub async fn add_endpoints(&self, ports: Vec<EndpointPort>) -> Result<(), FirewallError> {
        self.planned_batch(
            format!("guard {} ports", ports.len()),
            ports,
            Model::plan_add_port,
            Model::apply_add_port,
            |m, p| m.apply_remove_port(&p.endpoint_id),
        )
        .await
    }

    /// Unpublishes every port of an endpoint: deletes exactly its elements (one transaction;
    /// none when the endpoint published nothing).
    pub async fn remove_port_mappings(&self, endpoint_id: &str) -> Result<(), FirewallError> {
        self.planned(
            format!("unpublish ports of endpoint {endpoint_id}"),
            endpoint_id.to_string(),
            |m, id| Ok(m.plan_remove_endpoint(id).map(|del| (del, Elements::new()))),
            |m, id| m.apply_remove_endpoint(id),
        )
        .await
    }

    /// Guards an endpoint's bridge port (anti-spoofing, one small transaction): from then on
    /// frames entering the bridge through `port.port` must carry the endpoint's MAC and
    /// addresses. Call it before the port exists, so that no frame ever passes unchecked.
    pub async fn add_endpoint(&self, port: &EndpointPort) -> Result<(), FirewallError> {
        self.planned_add(
            format!("guard port {} of endpoint {}", port.port, port.endpoint_id),
            port.clone(),
            Model::plan_add_port,
            Model::apply_add_port,
        )
        .await
    }

    /// Forgets an endpoint: its guarded port and its published ports, in one transaction
    /// (none when the firewall knows neither). Call it once the port is gone: a port left
    /// without its elements would pass unchecked.
    pub async fn remove_endpoint(&self, endpoint_id: &str) -> Result<(), FirewallError> {
        self.planned(
            format!("remove endpoint {endpoint_id}"),
            endpoint_id.to_string(),
            |m, id| {
                Ok(m.plan_remove_endpoint_all(id)
                    .map(|del| (del, Elements::new())))
            },
            |m, id| {
                m.apply_remove_endpoint(id);
                m.apply_remove_port(id);
            },
        )
        .await
    }

    /// Drops (`on`) or stops dropping forwarded traffic of `family` that neither comes from
    /// nor goes to an interface an owner claimed (the bridges, a fragment's claims): for a
    /// host whose forwarding cnm itself turned on, so that it does not become a router between
    /// its other interfaces. A guard of the firewall's own table, which stays while it is on
    /// (as the forwarding does), networks or not. One transaction when it changes.
    pub async fn set_forward_drop(&self, family: IpFamily, on: bool) -> Result<(), FirewallError> {
        let v6 = family == IpFamily::V6;
        self.planned(
            format!(
                "{} forwarded {} traffic that is not cnm's",
                if on { "drop" } else { "stop dropping" },
                if v6 { "IPv6" } else { "IPv4" }
            ),
            (),
            move |m, ()| {
                let (add, del) = m.plan_forward_drop(v6, on);
                Ok(Some((del, add)))
            },
            move |m, ()| m.apply_forward_drop(v6, on),
        )
        .await
    }

    /// Re-applies the whole desired ruleset in one transaction (recreating every wanted table
    /// whether or not it exists, and the compatibility rule if wanted), and deletes tables of
    /// cnm's that nothing wants (a previous run's, an owner's with nothing left).
    pub async fn reconcile(&self) -> Result<(), FirewallError> {
        self.run(|fw, st| {
            fw.open(st)?;
            let extra = fw.stale_tables()?;
            fw.replace(st, "reconcile", extra).map(drop)
        })
        .await
    }

    /// Every wanted table as nft text (`nft -f` accepts it); empty when nothing is installed.
    pub fn render(&self) -> String {
        self.model().render()
    }

    /// The number of transactions committed so far (restores included).
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }

    /// The number of operations run so far, loading or not, whether or not they sent anything:
    /// each is one wait for the transaction lock and one trip to a blocking thread (a restore
    /// makes a few, not one per endpoint, issue 15).
    pub fn operations(&self) -> u64 {
        self.inner.operations.load(Ordering::Relaxed)
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
    /// (it exits when the last clone of the firewall is dropped); closed at once if the
    /// firewall never opened.
    #[doc(hidden)]
    pub fn watcher_alive(&self) -> watch::Receiver<()> {
        match self.inner.open.get() {
            Some(o) => o.watcher_alive.clone(),
            None => watch::channel(()).1,
        }
    }

    /// Tests only: `true` holds the watcher before its next read (returns once it waits), so
    /// notifications pile up and overflow; `false` lets it go on.
    #[doc(hidden)]
    pub async fn stall_watcher(&self, on: bool) -> Result<(), FirewallError> {
        let Some(o) = self.inner.open.get() else {
            return Ok(());
        };
        o.stall.set(on);
        if on {
            let mut stalled = o.stall.stalled.subscribe();
            // the watcher is blocked reading: a message it ignores wakes it
            o.socket
                .poke(o.watcher)
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
    /// netlink, at the top; every owner's `allow` chain sets [`crate::FORWARD_MARK`] on what it
    /// accepts). From then on the rule is kept while any owner's tables are in the kernel:
    /// restored with them, when someone removes it, or creates such a chain later; removed with
    /// the last owner's tables, put back with the next. Idempotent; never touches other rules.
    /// Returns whether the rule is in place somewhere (false: no such chain, or no owner's
    /// tables yet).
    pub async fn ensure_iptables_compat(&self) -> Result<bool, FirewallError> {
        self.iptables_compat(true, |ops| !ops.insert.is_empty() || ops.present > 0)
            .await
    }

    /// Removes the rules added by [`Firewall::ensure_iptables_compat`] and stops restoring
    /// them; returns whether there was one.
    pub async fn remove_iptables_compat(&self) -> Result<bool, FirewallError> {
        self.iptables_compat(false, |ops| !ops.delete.is_empty())
            .await
    }

    /// Records whether the iptables compatibility rule is `wanted` and puts it in place or
    /// removes it, alone in a transaction; `answer` reads the result from what was done. While
    /// the tables are loading, the load does it and the answer is `wanted`.
    async fn iptables_compat(
        &self,
        wanted: bool,
        answer: fn(&CompatOps) -> bool,
    ) -> Result<bool, FirewallError> {
        let (op, request) = if wanted {
            ("install the iptables compatibility rule", Compat::Ensure)
        } else {
            ("remove the iptables compatibility rule", Compat::Remove)
        };
        self.run(move |fw, st| {
            st.compat_wanted = wanted;
            if st.loading {
                return Ok(wanted);
            }
            let ops = fw.commit(st, op, Elements::new(), Elements::new(), request)?;
            Ok(answer(&ops))
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
        lock(&self.inner.model)
    }

    /// Runs `f` holding the transaction lock, on a blocking thread (netlink sends block).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Firewall, &mut TxState) -> Result<T, FirewallError> + Send + 'static,
    ) -> Result<T, FirewallError> {
        // One span from the wait for the lock to the end of the transaction, carried onto the
        // blocking thread so the transaction's own span nests in the caller's.
        let span = tracing::debug_span!("firewall");
        self.inner.operations.fetch_add(1, Ordering::Relaxed);
        let guard =
            tracing::Instrument::instrument(self.inner.tx.clone().lock_owned(), span.clone()).await;
        let fw = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut guard = guard;
            f(&fw, &mut guard)
        });
        task.await
            .map_err(|e| FirewallError::io("join the nftables transaction", io::Error::other(e)))?
    }

    /// Runs one change of the model as one transaction: `plan` reads from the model which
    /// elements of `data` to delete and to add (`None`: nothing to do); `apply` records the
    /// change in the model once the kernel has taken it (see [`Firewall::change`]).
    async fn planned<T: Send + 'static>(
        &self,
        op: String,
        data: T,
        plan: impl FnOnce(&Model, &T) -> Result<Option<(Elements, Elements)>, FirewallError>
        + Send
        + 'static,
        apply: impl FnOnce(&mut Model, &T) + Send + 'static,
    ) -> Result<(), FirewallError> {
        self.run(move |fw, st| {
            let Some((del, add)) = plan(&fw.model(), &data)? else {
                return Ok(());
            };
            fw.change(st, &op, del, add, |m| apply(m, &data))
        })
        .await
    }

    /// [`planned`](Self::planned) for a change that only adds elements: those `plan` returns.
    async fn planned_add<T: Send + 'static>(
        &self,
        op: String,
        data: T,
        plan: fn(&Model, &T) -> Result<Elements, FirewallError>,
        apply: fn(&mut Model, &T),
    ) -> Result<(), FirewallError> {
        self.planned(
            op,
            data,
            move |m, data| Ok(Some((Elements::new(), plan(m, data)?))),
            apply,
        )
        .await
    }

    /// Runs many changes of the model as one transaction: each item is planned against the
    /// model holding the items before it (so conflicts inside the batch are found as between
    /// separate calls), then the model is put back as it was (`revert` undoes `apply` exactly:
    /// each item's plan refuses what the model already holds) until the kernel took the whole
    /// batch, and then every item is applied.
    async fn planned_batch<T: Send + Sync + 'static>(
        &self,
        op: String,
        items: Vec<T>,
        plan: fn(&Model, &T) -> Result<Elements, FirewallError>,
        apply: fn(&mut Model, &T),
        revert: fn(&mut Model, &T),
    ) -> Result<(), FirewallError> {
        if items.is_empty() {
            return Ok(());
        }
        self.run(move |fw, st| {
            let mut add = Elements::new();
            let checked = {
                let mut m = fw.model();
                let mut planned = 0;
                let mut checked = Ok(());
                for item in &items {
                    match plan(&m, item) {
                        Ok(elements) => {
                            merge(&mut add, elements);
                            apply(&mut m, item);
                            planned += 1;
                        }
                        Err(e) => {
                            checked = Err(e);
                            break;
                        }
                    }
                }
                for item in items[..planned].iter().rev() {
                    revert(&mut m, item);
                }
                checked
            };
            checked?;
            fw.change(st, &op, Elements::new(), add, |m| {
                for item in &items {
                    apply(m, item);
                }
            })
        })
        .await
    }

    /// Takes the transaction lock from a thread outside the runtime (the watcher).
    pub(crate) fn lock_blocking(&self) -> tokio::sync::OwnedMutexGuard<TxState> {
        self.inner.tx.clone().blocking_lock_owned()
    }

    /// Sends the change of exactly `del` and `add` as one transaction, creating and deleting
    /// owners' tables as their first element comes or their last goes (nothing when it changes
    /// nothing; nothing at all while loading). When an element change fails because a table,
    /// set or element is gone (someone flushed or deleted it before the watcher restored it),
    /// restores the whole ruleset and retries (a few times: flushes may keep coming), inside the same lock. The caller applies
    /// the change to the model only on success, so a refused batch leaves the model unchanged.
    fn commit(
        &self,
        st: &mut TxState,
        op: &str,
        del: Elements,
        add: Elements,
        request: Compat,
    ) -> Result<CompatOps, FirewallError> {
        if st.loading {
            return Ok(CompatOps::default());
        }
        let plan = self.model().plan(del, add);
        let compat = compat_for(st, &plan, request);
        let touches_elements = !plan.del.is_empty() || !plan.add.is_empty();
        let mut tries = 0;
        loop {
            match self.send(st, op, &plan, compat) {
                Err(e)
                    if errno(&e) == Some(ENOENT)
                        && touches_elements
                        && tries < ENOENT_RETRIES
                        && !self.healing_paused() =>
                {
                    // Another flush may land between the restore and the retry (it does not
                    // take our lock): restore again, a bounded number of times.
                    tries += 1;
                    warn!(op, error = %e, tries, "nftables tables missing: restoring them before retrying");
                    self.restore(st, &format!("restore the ruleset for {op}"))?;
                    let generation = st.generation;
                    self.record_healing(|h| {
                        h.restores += 1;
                        h.last_restore = None;
                        h.last_generation = generation;
                    });
                }
                r => return r.map(|(ops, _)| ops),
            }
        }
    }

    /// Commits the change of exactly `del` and `add` (see [`Firewall::commit`]) and, only once
    /// it is made, applies it to the model with `apply`.
    fn change(
        &self,
        st: &mut TxState,
        op: &str,
        del: Elements,
        add: Elements,
        apply: impl FnOnce(&mut Model),
    ) -> Result<(), FirewallError> {
        self.commit(st, op, del, add, Compat::Keep)?;
        apply(&mut self.model());
        Ok(())
    }

    /// Replaces every wanted table with the model (and the compatibility rule as wanted): one
    /// transaction, if anything is wanted. Returns whether one was sent.
    pub(crate) fn restore(&self, st: &mut TxState, op: &str) -> Result<bool, FirewallError> {
        self.replace(st, op, Vec::new())
    }

    /// Like [`Firewall::restore`], deleting `extra` tables in the same transaction.
    fn replace(
        &self,
        st: &mut TxState,
        op: &str,
        extra: Vec<Table>,
    ) -> Result<bool, FirewallError> {
        let plan = self.model().replace_plan(extra);
        let compat = match (plan.owners_live.1, st.compat_wanted) {
            (true, true) => Compat::Ensure,
            (true, false) => Compat::Keep,
            (false, _) => Compat::Remove,
        };
        let (_, sent) = self.send(st, op, &plan, compat)?;
        if sent {
            st.last_replace = st.generation;
        }
        Ok(sent)
    }

    /// Tables in the kernel that may be cnm's and that nothing wants now.
    fn stale_tables(&self) -> Result<Vec<Table>, FirewallError> {
        let o = self
            .inner
            .open
            .get()
            .ok_or_else(|| FirewallError::io("list tables", io::Error::other("not open")))?;
        let present = o
            .socket
            .tables()
            .map_err(|e| FirewallError::io("list the nftables tables", e))?;
        let wanted = self.model().desired_tables();
        Ok(present
            .into_iter()
            .filter(|(family, name)| may_be_ours(*family, name))
            .map(|(family, name)| Table {
                family,
                name: name.into(),
            })
            .filter(|t| !wanted.contains(t))
            .collect())
    }

    /// Whether the kernel holds anything of cnm's (a table, the compatibility rule), asked
    /// through a socket of its own, so that a firewall with nothing to do opens nothing.
    fn leftovers(&self) -> Result<bool, FirewallError> {
        let op = "look for a previous run's tables";
        let sock = self
            .inner
            .ns
            .run_blocking(NfSocket::open)
            .map_err(|source| FirewallError::Namespace {
                op: op.into(),
                source,
            })?
            .map_err(|e| FirewallError::io(op, e))?;
        let tables = sock.tables().map_err(|e| FirewallError::io(op, e))?;
        if tables.iter().any(|(f, n)| may_be_ours(*f, n)) {
            return Ok(true);
        }
        let compat = compat::plan_remove(&sock).map_err(|e| FirewallError::io(op, e))?;
        Ok(!compat.is_empty())
    }

    /// One transaction, named after the generation we believe current: if another process
    /// committed in between, the kernel refuses it (`ERESTART`) and it is re-planned (the
    /// compatibility rule's state re-read) for the new generation. So each of our commits has
    /// a known generation, which lets the watcher tell its own transactions from others'.
    /// Returns the compatibility rule's operations and whether a transaction was committed.
    fn send(
        &self,
        st: &mut TxState,
        op: &str,
        plan: &Plan,
        compat: Compat,
    ) -> Result<(CompatOps, bool), FirewallError> {
        if plan.is_empty() && compat == Compat::Keep {
            return Ok((CompatOps::default(), false));
        }
        let span = info_span!("nft_transaction", op);
        let _entered = span.enter();
        let sock = self.open(st)?.socket.clone();
        for _ in 0..MAX_RESTARTS {
            let g = match st.generation {
                Some(g) => g,
                None => sock.generation().map_err(|e| {
                    FirewallError::io(format!("read the ruleset generation for {op}"), e)
                })?,
            };
            let ops = match compat {
                Compat::Keep => Ok(CompatOps::default()),
                Compat::Ensure => compat::plan_ensure(&sock),
                Compat::Remove => compat::plan_remove(&sock),
            }
            .map_err(|e| {
                FirewallError::io(format!("look for the iptables FORWARD chains for {op}"), e)
            })?;
            if plan.is_empty() && ops.is_empty() {
                st.generation = Some(g);
                return Ok((ops, false));
            }
            let first = sock.seqs(0);
            let (bytes, described) = encode(plan, &ops, first, Some(g));
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
                    return Ok((ops, true));
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

    pub(crate) fn is_loading_now(st: &TxState) -> bool {
        st.loading
    }

    pub(crate) fn compat_wanted(&self, st: &TxState) -> bool {
        st.compat_wanted && self.model().owners_live()
    }

    /// Whether any of these tables is one the model wants now.
    pub(crate) fn wants_any(&self, tables: &[Table]) -> bool {
        let wanted = self.model().desired_tables();
        tables.iter().any(|t| wanted.contains(t))
    }

    pub(crate) fn current_generation(&self) -> io::Result<u32> {
        match self.inner.open.get() {
            Some(o) => o.socket.generation(),
            None => Err(io::Error::other("the firewall is not open")),
        }
    }

    /// Re-inserts the compatibility rule where it is missing (a transaction only if needed).
    pub(crate) fn repair_compat(&self, st: &mut TxState) -> Result<bool, FirewallError> {
        let ops = self.commit(
            st,
            "repair the iptables compatibility rule",
            Elements::new(),
            Elements::new(),
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

/// Locks a std mutex; every critical section is plain bookkeeping that cannot panic half-way.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a change does to the compatibility rule: it goes with the last owner's tables, comes
/// with the first (when wanted), and otherwise follows the request.
fn compat_for(st: &TxState, plan: &Plan, request: Compat) -> Compat {
    match plan.owners_live {
        (true, false) => Compat::Remove,
        (_, false) if request == Compat::Remove => Compat::Remove,
        (_, false) => Compat::Keep,
        (false, true) if st.compat_wanted => Compat::Ensure,
        (_, true) => request,
    }
}

/// Encodes a plan (and the compatibility rule operations) as one nfnetlink batch.
pub(crate) fn encode(
    plan: &Plan,
    compat: &CompatOps,
    first_seq: u32,
    genid: Option<u32>,
) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut b = Batch::new(first_seq, genid);
    let registry = &plan.registry;
    // nft numbers the named sets of every table it creates first; rules refer to them by id
    for (owner, _) in &plan.create {
        for t in registry.tables(*owner) {
            for (_, set) in &t.sets {
                b.declare_set(&t.table, &set.name);
            }
        }
    }
    for (owner, elements) in &plan.create {
        for t in registry.tables(*owner) {
            // add + delete + add: replaces the table whether or not it exists
            b.add_table(&t.table);
            b.delete_table(&t.table);
            b.add_table(&t.table);
            for c in &t.chains {
                b.add_chain(
                    &t.table,
                    &c.name,
                    c.hook.as_ref().map(|h| (h.num, h.prio, h.ty)),
                );
            }
            for (id, set) in &t.sets {
                b.add_set(&t.table, &set.spec());
                if let Some(elems) = elements.get(id).filter(|e| !e.is_empty()) {
                    push_elems(&mut b, &t.table, set, elems, false);
                }
            }
            for rule in &t.rules {
                b.add_rule(&t.table, &rule.chain, &rule.exprs, None, false, &rule.text);
            }
        }
    }
    // add + delete: deletes the table whether or not it exists
    for t in &plan.delete {
        b.add_table(t);
        b.delete_table(t);
    }
    for (id, elems) in &plan.del {
        let (t, set) = registry.set(*id);
        push_elems(&mut b, t, set, elems, true);
    }
    for (id, elems) in &plan.add {
        let (t, set) = registry.set(*id);
        push_elems(&mut b, t, set, elems, false);
    }
    compat.encode(&mut b);
    b.finish()
}

/// Adds (or deletes) elements of a set, in as many messages as needed to keep each element
/// list under [`LIST_BUDGET`] bytes.
fn push_elems(
    b: &mut Batch,
    table: &Table,
    set: &SetDef,
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
        b.set_elems(table, &set.name, None, chunk, delete, text);
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
    use crate::model::{NetworkRules, Owner, SetId};
    use crate::ruleset::{SetName, SharedSet};

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
        parse_reference(include_str!("../testdata/nft-1.0.6-batch.hex"))
    }

    fn parse_reference(hex: &str) -> Vec<(u16, Vec<u8>)> {
        hex.lines()
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

    /// Every built-in table (the firewall's own, the bridge fragment's), with `elements`.
    fn replace(elements: Elements) -> (Vec<u8>, Vec<(u32, String)>) {
        let of = |owner: Owner| -> Elements {
            elements
                .iter()
                .filter(|(s, _)| s.owner() == owner)
                .map(|(s, e)| (*s, e.clone()))
                .collect()
        };
        let plan = Plan {
            registry: Default::default(),
            create: vec![
                (Owner::Shared, of(Owner::Shared)),
                (Owner::Bridge, of(Owner::Bridge)),
            ],
            delete: vec![],
            del: Elements::new(),
            add: Elements::new(),
            owners_live: (true, true),
        };
        encode(&plan, &CompatOps::default(), 1, Some(7))
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
        let mut put = |set: SetId, e| {
            elements.entry(set).or_default().insert(e);
        };
        put(SetName::Bridges.into(), point(vec![br], vec![]));
        put(SharedSet::Interfaces.into(), point(vec![br], vec![]));
        put(
            SharedSet::Interfaces.into(),
            point(vec![Field::ifname(&"br-b".parse().unwrap())], vec![]),
        );
        put(
            SetName::Bridges.into(),
            point(vec![Field::ifname(&"br-b".parse().unwrap())], vec![]),
        );
        put(
            SetName::NoHost.into(),
            point(
                vec![Field::NfProto(2), Field::ifname(&"br-b".parse().unwrap())],
                vec![],
            ),
        );
        put(
            SharedSet::ForwardDrop.into(),
            point(vec![Field::NfProto(2)], vec![]),
        );
        put(
            SharedSet::ForwardDrop.into(),
            point(vec![Field::NfProto(10)], vec![]),
        );
        put(SetName::SameBridge.into(), point(vec![br, br], vec![]));
        put(
            SetName::Masq4.into(),
            Element {
                key: vec![br, v4("172.18.0.0")],
                key_end: Some(vec![br, v4("172.18.255.255")]),
                data: vec![],
            },
        );
        // hash sets and maps: single ports, no key end
        put(
            SetName::Published4.into(),
            point(
                vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(80)],
                vec![],
            ),
        );
        put(
            SetName::Published6.into(),
            point(
                vec![v6("fd00:1::2"), Field::Proto(17), Field::Port(53)],
                vec![],
            ),
        );
        put(
            SetName::Dnat4.into(),
            point(
                vec![v4("127.0.0.1"), Field::Proto(17), Field::Port(53)],
                vec![v4("172.18.0.3"), Field::Port(5353)],
            ),
        );
        put(
            SetName::Dnat4Any.into(),
            point(
                vec![Field::Proto(6), Field::Port(80)],
                vec![v4("172.18.0.3"), Field::Port(8080)],
            ),
        );
        put(
            SetName::Dnat6.into(),
            point(
                vec![v6("fd00::1"), Field::Proto(6), Field::Port(80)],
                vec![v6("fd00:1::2"), Field::Port(8080)],
            ),
        );
        put(
            SetName::Dnat6Any.into(),
            point(
                vec![Field::Proto(132), Field::Port(443)],
                vec![v6("fd00:1::2"), Field::Port(8443)],
            ),
        );
        // interval sets and maps: real ranges only
        put(
            SetName::Published4Range.into(),
            Element {
                key: vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(8000)],
                key_end: Some(vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(8010)]),
                data: vec![],
            },
        );
        put(
            SetName::Dnat4Range.into(),
            Element {
                key: vec![v4("10.0.0.1"), Field::Proto(6), Field::Port(8000)],
                key_end: Some(vec![v4("10.0.0.1"), Field::Proto(6), Field::Port(8010)]),
                data: vec![v4("172.18.0.2")],
            },
        );
        put(
            SetName::Dnat4AnyRange.into(),
            Element {
                key: vec![Field::Proto(17), Field::Port(5000)],
                key_end: Some(vec![Field::Proto(17), Field::Port(5009)]),
                data: vec![v4("172.18.0.4")],
            },
        );
        // the bridge table's anti-spoofing sets
        let port = Field::ifname(&"veth1234567".parse().unwrap());
        put(SetName::Ports.into(), point(vec![port], vec![]));
        put(
            SetName::OwnMac.into(),
            point(
                vec![port, Field::Mac([0x02, 0x42, 0xac, 0x12, 0, 2])],
                vec![],
            ),
        );
        put(
            SetName::OwnV4.into(),
            point(vec![port, v4("172.18.0.2")], vec![]),
        );
        put(
            SetName::OwnV6.into(),
            point(vec![port, v6("fd00:1::2")], vec![]),
        );
        let target: std::net::Ipv6Addr = "fd00:1::2".parse().unwrap();
        put(
            SetName::NdTarget.into(),
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
        assert_eq!(ours.len(), 20);
        for m in &ours {
            assert!(
                theirs.contains(m),
                "element message not sent by nft: {m:02x?}"
            );
        }
        assert_eq!(theirs.len(), ours.len() + 1);
    }

    /// A declared fragment (with every set shape, key, match and action) and the firewall's
    /// own table, created by the change that adds the fragment's first elements, encode as
    /// nft 1.0.6 encodes their rendering (`testdata/nft-1.0.6-fragment.nft`, regenerated as
    /// the batch reference is, see `testdata/mnl2hex.py`; `CNM_BLESS=1` rewrites the .nft).
    #[test]
    fn a_declared_fragment_matches_nft_byte_for_byte() {
        let (spec, change) = crate::fragment::sample();
        let mut model = Model::default();
        let owner = model.declare(&spec).unwrap();
        let delta = model.plan_custom(owner, &change).unwrap();
        let plan = model.plan(delta.del.clone(), delta.add.clone());
        assert_eq!(
            plan.create.len(),
            2,
            "the firewall's own table and the fragment's"
        );
        assert_eq!(plan.owners_live, (false, true));
        model.apply_custom(delta);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/nft-1.0.6-fragment.nft"
        );
        if std::env::var_os("CNM_BLESS").is_some() {
            std::fs::write(path, model.render()).unwrap();
        }
        assert_eq!(model.render(), std::fs::read_to_string(path).unwrap());
        let (bytes, described) = encode(&plan, &CompatOps::default(), 1, Some(7));
        let ours = split(&bytes);
        assert_eq!(ours.len(), described.len());
        let pick = |v: Vec<(u16, Vec<u8>)>| -> Vec<(u16, Vec<u8>)> {
            v.into_iter()
                .filter(|m| [NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM].contains(&m.0))
                .collect()
        };
        let ours = pick(ours);
        let theirs = pick(parse_reference(include_str!(
            "../testdata/nft-1.0.6-fragment.hex"
        )));
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "message {i} (type {:#x}) differs", a.0);
        }
    }

    #[test]
    fn large_element_batches_are_split_under_the_attribute_limit() {
        let net = NetworkRules::nat("n", "br-n".parse().unwrap(), vec![]);
        let m = PortMapping {
            proto: cnm_types::Protocol::Tcp,
            host_ip: None,
            host_ports: (1, 60000),
            container_ip: "172.18.0.2".parse().unwrap(),
            container_ports: (2, 60001),
        };
        let add = model::mapping_elements(&net, &m);
        assert_eq!(add[&SetName::Dnat4Any.into()].len(), 60000);
        let plan = Plan {
            registry: Default::default(),
            create: vec![],
            delete: vec![],
            del: Elements::new(),
            add,
            owners_live: (true, true),
        };
        let (bytes, described) = encode(&plan, &CompatOps::default(), 1, None);
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
