//! The resolver's own threads: each runs a single-threaded tokio runtime, and every listener
//! (its UDP and TCP tasks, and the forwarded queries it starts) lives on one of them.
//!
//! Why not the caller's runtime: on a multi-threaded runtime a datagram's readiness wakes the
//! listener task on whichever worker holds the I/O driver, and the scheduler wakes another
//! worker to look for work besides; a local answer is a few microseconds of work, so those
//! wake-ups and migrations were a fifth of its cost (`cargo bench -p cnm-dns --bench
//! local_names`: 7.2-7.9 against 5.7-5.9 µs of CPU per dnsperf query, two shared cores). On a
//! thread of its own a listener is woken by its own `epoll_wait` and answers on the same thread.
//! Sandboxes are spread over the threads, so many sandboxes still use every core; one sandbox's
//! queries are answered by one thread (a local answer never waits on I/O, so one thread keeps
//! up with its socket).

use cnm_types::FailedTo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::DnsError;

/// The threads serving the listeners; dropping it stops them (and every task on them).
#[derive(Debug)]
pub(crate) struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` threads (at least one) called `name-0`, `name-1`, ….
    pub(crate) fn start(n: usize, name: &str) -> Result<Self, DnsError> {
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DnsError::failed("start the runtime of", "a DNS thread", e))?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Runs the listeners until the resolver goes (the sender is dropped); the
                    // runtime is dropped here, outside any async context, cancelling its tasks.
                    rt.block_on(async move {
                        let _ = stopped.await;
                    });
                })
                .map_err(|e| DnsError::failed("start", "a DNS thread", e))?;
            workers.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Self {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// The runtime the next listener goes to (in turn).
    pub(crate) fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        &self.workers[i].handle
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.workers {
            drop(w.stop.take());
        }
        // Wait for the sockets to be closed, so that a new resolver can bind the same
        // addresses at once; never on one of our own threads (it cannot wait for itself).
        let me = std::thread::current().id();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take()
                && t.thread().id() != me
                && t.join().is_err()
            {
                tracing::warn!("a DNS thread panicked");
            }
        }
    }
}

/// How many threads a resolver starts by default: one per core, at most four (a local
/// answer is microseconds; more threads only help with more busy sandboxes than cores).
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}
