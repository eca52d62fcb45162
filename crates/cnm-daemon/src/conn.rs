//! Serving HTTP/1 connections within bounds, so slow or idle clients cannot starve the daemon
//! (issue 8: 3,000 half-sent requests stayed open for ever; about 18,000 idle connections used
//! up the descriptors and cnmd stopped answering).
//!
//! Three bounds:
//! - **Header timeout.** hyper's header-read timer starts whenever a connection waits for a
//!   request head: right after accept, and again after each response on a keep-alive connection.
//!   So the one timer closes a connection that never sends anything, one that sends half a head
//!   (a trickle gains nothing: the deadline is not pushed back by progress), and a keep-alive
//!   connection idle between requests: it is also the idle timeout. A response being written
//!   (an `/events` stream) is not waiting for a head, and is never cut by it.
//! - **Connection cap.** At most [`Limits::max_connections`] connections are open. A new client
//!   beyond it is still served: the connection idle for longest (a half-sent head or a keep-alive
//!   connection between requests) is closed to make room, or when every connection is busy with a
//!   request, the oldest one. Closing the least recently useful connection, rather than refusing
//!   the new one, means a flood of idle connections can never lock a real client out.
//! - **Out of descriptors.** When accept fails with `EMFILE`/`ENFILE` anyway (descriptors held
//!   elsewhere, e.g. by published ports), the longest-idle connection is closed and accept is
//!   retried once one has gone (bounded wait), instead of axum's one-second pause.
//!
//! Each connection is in a [`Registry`] (ordered by when it last became idle) and knows whether a
//! request is in flight: the service marks it busy when a request head has arrived and the
//! response body's guard marks it idle again when hyper drops the finished body.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::errno::Errno;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::metrics::{CloseReason, Metrics};

/// The application every connection serves, type-erased.
pub(crate) type App = tower::util::BoxCloneSyncService<Request, Response, Infallible>;

/// How long accept waits for a connection to close after running out of descriptors.
const DESCRIPTOR_WAIT: Duration = Duration::from_millis(100);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time allowed for a request head, counted from when the connection starts waiting for one.
    pub(crate) header_timeout: Duration,
    /// Open connections at most; beyond it the longest-idle one is closed.
    pub(crate) max_connections: usize,
}

/// Something that accepts connections: the API's unix socket, the metrics TCP listener.
pub(crate) trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Io> {
        let (s, _) = self.accept().await?;
        // Small request/response exchanges: do not wait for Nagle.
        if let Err(e) = s.set_nodelay(true) {
            tracing::debug!(error = %e, "set TCP_NODELAY");
        }
        Ok(s)
    }
}

/// One connection's entry.
#[derive(Debug)]
struct Entry {
    /// Requests in flight (at most one on HTTP/1, counted to be safe).
    busy: u32,
    /// Its key in `Table::idle` while idle.
    idle_since: Option<u64>,
    /// Closes the connection when sent (or dropped).
    evict: Option<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct Table {
    /// Ids of connections and idle stamps, from one counter: a larger number is more recent.
    next: u64,
    /// Every open connection by id (accept order).
    conns: BTreeMap<u64, Entry>,
    /// Idle connections by the stamp of when they became idle: the first is the longest idle.
    idle: BTreeMap<u64, u64>,
}

impl Table {
    fn stamp(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Removes the longest-idle connection, else the oldest one, and tells it to close.
    fn evict_one(&mut self) -> bool {
        let victim = match self.idle.first_key_value() {
            Some((_, id)) => Some(*id),
            None => self.conns.first_key_value().map(|(id, _)| *id),
        };
        match victim {
            Some(id) => {
                self.evict(id);
                true
            }
            None => false,
        }
    }

    /// Removes every idle connection and tells each to close; returns how many.
    fn evict_idle(&mut self) -> usize {
        let ids: Vec<u64> = self.idle.values().copied().collect();
        for id in &ids {
            self.evict(*id);
        }
        ids.len()
    }

    fn evict(&mut self, id: u64) {
        if let Some(mut e) = self.conns.remove(&id) {
            if let Some(s) = e.idle_since.take() {
                self.idle.remove(&s);
            }
            if let Some(tx) = e.evict.take() {
                // The connection may be finishing on its own: nobody to tell is fine.
                let _ = tx.send(());
            }
        }
    }
}

/// The open connections of one listener.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    table: Mutex<Table>,
    /// Signalled whenever a connection's task ends.
    closed: Notify,
}

impl Registry {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.table().conns.len()
    }

    /// Registers a new (idle) connection, first closing one when `cap` are open already.
    /// Returns its id, the signal that evicts it, and whether another was evicted for it.
    fn admit(&self, cap: usize) -> (u64, oneshot::Receiver<()>, bool) {
        let mut t = self.table();
        let mut evicted = false;
        while t.conns.len() >= cap.max(1) && t.evict_one() {
            evicted = true;
        }
        let id = t.stamp();
        let (tx, rx) = oneshot::channel();
        t.conns.insert(
            id,
            Entry {
                busy: 0,
                idle_since: Some(id),
                evict: Some(tx),
            },
        );
        t.idle.insert(id, id);
        (id, rx, evicted)
    }

    fn busy(&self, id: u64) {
        let mut t = self.table();
        let Some(e) = t.conns.get_mut(&id) else {
            return;
        };
        e.busy += 1;
        if let Some(s) = e.idle_since.take() {
            t.idle.remove(&s);
        }
    }

    fn idle(&self, id: u64) {
        let mut t = self.table();
        let stamp = t.stamp();
        let Some(e) = t.conns.get_mut(&id) else {
            return;
        };
        e.busy = e.busy.saturating_sub(1);
        if e.busy == 0 && e.idle_since.is_none() {
            e.idle_since = Some(stamp);
            t.idle.insert(stamp, id);
        }
    }

    fn remove(&self, id: u64) {
        {
            let mut t = self.table();
            if let Some(e) = t.conns.remove(&id)
                && let Some(s) = e.idle_since
            {
                t.idle.remove(&s);
            }
        }
        self.closed.notify_one();
    }
}

/// Tells the registry about its connection when dropped, however the holder ends: a
/// connection's task holds one that removes the connection ([`Registry::remove`]); a response
/// body, one that marks the connection idle again ([`Registry::idle`]), as hyper drops a body
/// once it is sent.
struct RegistryGuard {
    registry: Arc<Registry>,
    id: u64,
    on_drop: fn(&Registry, u64),
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        (self.on_drop)(&self.registry, self.id);
    }
}

/// A response body that keeps its connection marked busy until it is dropped.
struct Guarded {
    inner: Body,
    _guard: RegistryGuard,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The service of one connection: the app, with the connection marked busy per request.
#[derive(Clone)]
struct ConnService {
    app: App,
    registry: Arc<Registry>,
    id: u64,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<Guarded>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.registry.busy(self.id);
        let guard = RegistryGuard {
            registry: self.registry.clone(),
            id: self.id,
            on_drop: Registry::idle,
        };
        let app = self.app.clone();
        Box::pin(async move {
            let resp = tower::ServiceExt::oneshot(app, req.map(Body::new)).await?;
            Ok(resp.map(|inner| Guarded {
                inner,
                _guard: guard,
            }))
        })
    }
}

fn count(metrics: &Option<Arc<Metrics>>, why: CloseReason) {
    if let Some(m) = metrics {
        m.connection_closed(why);
    }
}

/// Accepts and serves connections on `listener` until `shutdown` turns true, then stops
/// accepting, closes every idle connection (half-sent heads included: they would otherwise hold
/// the shutdown for the header timeout), lets in-flight requests finish, and returns once every
/// connection has closed.
pub(crate) async fn serve<L: Listener>(
    listener: L,
    app: App,
    limits: Limits,
    registry: Arc<Registry>,
    metrics: Option<Arc<Metrics>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Every connection task holds a sender; when all are gone, every connection has closed.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    loop {
        let io = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            r = listener.accept_one() => r,
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                let out_of_fds = e
                    .raw_os_error()
                    .map(Errno::from_raw)
                    .is_some_and(|n| matches!(n, Errno::EMFILE | Errno::ENFILE));
                if out_of_fds {
                    tracing::warn!(error = %e, open = registry.len(), "out of descriptors; closing the longest-idle connection");
                    let closed = registry.closed.notified();
                    if registry.table().evict_one() {
                        count(&metrics, CloseReason::Evicted);
                    }
                    // Bounded: another client may be holding no connection of ours at all.
                    let _ = tokio::time::timeout(DESCRIPTOR_WAIT, closed).await;
                } else {
                    // ECONNABORTED and the like concern one client only.
                    tracing::debug!(error = %e, "accept failed");
                }
                continue;
            }
        };
        let (id, evict, evicted) = registry.admit(limits.max_connections);
        if evicted {
            tracing::debug!(
                max = limits.max_connections,
                "connection cap reached; closed the longest-idle connection"
            );
            count(&metrics, CloseReason::Evicted);
        }
        let registered = RegistryGuard {
            registry: registry.clone(),
            id,
            on_drop: Registry::remove,
        };
        let svc = ConnService {
            app: app.clone(),
            registry: registry.clone(),
            id,
        };
        let conn = http.serve_connection(TokioIo::new(io), svc);
        let mut stop = shutdown.clone();
        let alive = alive_tx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _registered = registered;
            let _alive = alive;
            let mut conn = std::pin::pin!(conn);
            let mut evict = evict;
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            if e.is_timeout() {
                                count(&metrics, CloseReason::HeaderTimeout);
                            }
                            tracing::debug!(error = %e, "connection ended");
                        }
                        break;
                    }
                    // Evicted: dropping the connection closes its descriptor.
                    _ = &mut evict => break,
                    _ = stop.wait_for(|s| *s), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    let idle = registry.table().evict_idle();
    tracing::debug!(idle, busy = registry.len(), "stopped accepting");
    drop(alive_tx);
    // Every sender gone: every connection has closed. `recv` sees no message, only the end.
    let _ = alive_rx.recv().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_evicts_the_longest_idle_then_the_oldest() {
        let r = Registry::default();
        let (a, _ra, e) = r.admit(3);
        assert!(!e);
        let (b, _rb, _) = r.admit(3);
        let (c, _rc, _) = r.admit(3);
        assert!(c > b);
        // a becomes busy, then b finishes a request (idle again, more recently than c).
        r.busy(a);
        r.busy(b);
        r.idle(b);
        let (d, _rd, evicted) = r.admit(3);
        assert!(evicted);
        let t = r.table();
        assert_eq!(
            t.conns.keys().copied().collect::<Vec<_>>(),
            vec![a, b, d],
            "c was idle longest"
        );
        drop(t);
        // Everything busy: the oldest goes.
        r.busy(b);
        r.busy(d);
        let (e, _re, evicted) = r.admit(3);
        assert!(evicted);
        assert_eq!(
            r.table().conns.keys().copied().collect::<Vec<_>>(),
            vec![b, d, e]
        );
        r.remove(b);
        r.remove(d);
        r.remove(e);
        assert_eq!(r.len(), 0);
        assert!(r.table().idle.is_empty());
    }

    #[tokio::test]
    async fn eviction_signals_the_connection() {
        let r = Registry::default();
        let (_a, ra, _) = r.admit(1);
        let (_b, _rb, evicted) = r.admit(1);
        assert!(evicted);
        tokio::time::timeout(Duration::from_secs(1), ra)
            .await
            .expect("signalled at once")
            .expect("sent, not dropped");
    }
}
