//! Where cnm's time goes: a `tracing` layer that adds up, per span name, the time spent in
//! each span less the time spent in its child spans (its own time), and the phases of a
//! public call the report shows, built from those sums.
//!
//! The spans are cnm's own (the library crates open them at debug level; nothing pays for them
//! unless a subscriber enables them): `cnm` (one public call, in the controller), `driver`
//! (a driver call), `kernel` (a kernel call of the controller), `firewall` and
//! `nft_transaction` (cnm-firewall), `store_commit` (a store backend's commit). The layer
//! measures wall time from a span's creation to its close, so time spent waiting (a blocking
//! thread, a lock, the disk) counts where it is spent.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::span::{Attributes, Id};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The span names the layer times; every other span is left alone. Every span of cnm-core's
/// kernel module (one per kernel call, named after it) counts as `kernel`.
pub const TIMED: &[&str] = &[
    "cnm",
    "driver",
    "kernel",
    "firewall",
    "nft_transaction",
    "store_commit",
];

/// The phases a call's time is split into, and the spans whose own time each one adds up.
/// Whatever no span covers (the public handle, task hand-over) goes to bookkeeping too.
pub const PHASES: &[(&str, &[&str])] = &[
    ("kernel", &["kernel", "driver"]),
    ("firewall", &["firewall", "nft_transaction"]),
    ("store", &["store_commit"]),
];

/// The name of the remainder phase: the controller's own work.
pub const BOOKKEEPING: &str = "bookkeeping";

/// Per span name: the sum of its spans' own time (less their children's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals(pub BTreeMap<&'static str, Duration>);

impl Totals {
    /// What was added between `before` and `self`.
    pub fn since(&self, before: &Totals) -> Totals {
        Totals(
            self.0
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        v.saturating_sub(before.0.get(k).copied().unwrap_or_default()),
                    )
                })
                .collect(),
        )
    }

    /// The phases of a call that took `wall` in all: kernel, firewall and store from their
    /// spans, and bookkeeping the rest (never below zero).
    pub fn phases(&self, wall: Duration) -> Vec<(&'static str, Duration)> {
        let mut out = Vec::new();
        let mut covered = Duration::ZERO;
        for (phase, names) in PHASES {
            let d: Duration = names.iter().filter_map(|n| self.0.get(n)).copied().sum();
            covered += d;
            out.push((*phase, d));
        }
        out.push((BOOKKEEPING, wall.saturating_sub(covered)));
        out
    }
}

/// The sums of this process: `main` installs their layer, the scenarios read them.
pub static TIMES: LazyLock<SpanTimes> = LazyLock::new(SpanTimes::default);

/// One call's phases (see [`Totals::phases`]).
pub type Phases = Vec<(&'static str, Duration)>;

/// The mean of each phase over `samples`, in milliseconds, as the report's `breakdown_ms`
/// object (means, so the phases add up to the mean call).
pub fn mean_ms(samples: &[Phases]) -> serde_json::Map<String, serde_json::Value> {
    let mut sums: Vec<(&'static str, f64)> = Vec::new();
    for s in samples {
        for (name, d) in s {
            let ms = d.as_secs_f64() * 1e3;
            match sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => *v += ms,
                None => sums.push((name, ms)),
            }
        }
    }
    let n = samples.len().max(1) as f64;
    sums.into_iter()
        .map(|(name, v)| {
            (
                name.to_owned(),
                serde_json::json!(crate::report::round3(v / n)),
            )
        })
        .collect()
}

/// A handle on the sums, shared with the layer.
#[derive(Debug, Clone, Default)]
pub struct SpanTimes(Arc<Mutex<Totals>>);

impl SpanTimes {
    /// The sums so far.
    pub fn snapshot(&self) -> Totals {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The layer that feeds this handle.
    pub fn layer(&self) -> SpanLayer {
        self.layer_with_clock(Arc::new(Instant::now))
    }

    /// The layer, reading the time from `clock` (a test's own clock).
    pub fn layer_with_clock(&self, clock: Clock) -> SpanLayer {
        SpanLayer {
            times: self.clone(),
            clock,
        }
    }

    fn add(&self, name: &'static str, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t.0.entry(name).or_default() += d;
    }
}

/// Where the layer reads the time.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The layer (see the module documentation).
pub struct SpanLayer {
    times: SpanTimes,
    clock: Clock,
}

/// What the layer keeps in a timed span's extensions.
struct Timing {
    start: Instant,
    children: Duration,
}

/// The module whose spans (one per kernel call) all count as `kernel`.
const KERNEL_TARGET: &str = "cnm_core::kernel";

/// The name a span's time is added up under, if the layer times it at all.
fn timed_as(meta: &Metadata<'_>) -> Option<&'static str> {
    if !meta.is_span() {
        None
    } else if meta.target() == KERNEL_TARGET {
        Some("kernel")
    } else {
        TIMED.iter().copied().find(|n| *n == meta.name())
    }
}

fn timed(meta: &Metadata<'_>) -> bool {
    timed_as(meta).is_some()
}

impl<S> Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !timed(attrs.metadata()) {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Timing {
                start: (self.clock)(),
                children: Duration::ZERO,
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(timing) = span.extensions_mut().remove::<Timing>() else {
            return;
        };
        let wall = (self.clock)().saturating_duration_since(timing.start);
        if let Some(name) = timed_as(span.metadata()) {
            self.times.add(name, wall.saturating_sub(timing.children));
        }
        // The nearest timed ancestor does not count this span's time as its own.
        let mut parent = span.parent();
        while let Some(p) = parent {
            if let Some(t) = p.extensions_mut().get_mut::<Timing>() {
                t.children += wall;
                break;
            }
            parent = p.parent();
        }
    }
}

/// The per-phase filter of the layer: only the timed spans, at any level.
pub fn filter() -> tracing_subscriber::filter::FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(timed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn own_time_excludes_timed_children_and_untimed_spans_are_transparent() {
        // A clock the test moves by hand: no timing in a test.
        let base = Instant::now();
        let now_ms = Arc::new(AtomicU64::new(0));
        let clock: Clock = {
            let now_ms = now_ms.clone();
            Arc::new(move || base + Duration::from_millis(now_ms.load(Ordering::SeqCst)))
        };
        let advance = |ms: u64| now_ms.fetch_add(ms, Ordering::SeqCst);
        let times = SpanTimes::default();
        let layer = times.layer_with_clock(clock).with_filter(filter());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let op = tracing::info_span!("cnm", op = "join");
            let entered = op.enter();
            advance(4);
            {
                // Not timed: its time stays the op's, and the driver below it is still the
                // op's child.
                let other = tracing::info_span!("something_else");
                let _other = other.enter();
                advance(1);
                let driver = tracing::debug_span!("driver", call = "join");
                let _driver = driver.enter();
                advance(6);
                let fw = tracing::debug_span!("nft_transaction");
                let _fw = fw.enter();
                advance(3);
                // A span of cnm-core's kernel module is named after its call and counts as
                // `kernel`.
                let call = tracing::debug_span!(target: "cnm_core::kernel", "loopback_up");
                let _call = call.enter();
                advance(5);
            }
            advance(2);
            drop(entered);
            drop(op);
        });
        let t = times.snapshot();
        let ms = Duration::from_millis;
        assert_eq!(t.0.get("cnm"), Some(&ms(4 + 1 + 2)), "{t:?}");
        assert_eq!(t.0.get("driver"), Some(&ms(6)), "{t:?}");
        assert_eq!(t.0.get("nft_transaction"), Some(&ms(3)), "{t:?}");
        assert_eq!(t.0.get("kernel"), Some(&ms(5)), "{t:?}");
        assert!(!t.0.contains_key("something_else"));
        assert!(!t.0.contains_key("loopback_up"));
    }

    #[test]
    fn phases_split_a_call_and_bookkeeping_is_the_rest() {
        let ms = Duration::from_millis;
        let before = Totals(BTreeMap::from([("kernel", ms(1)), ("store_commit", ms(1))]));
        let after = Totals(BTreeMap::from([
            ("kernel", ms(3)),
            ("driver", ms(1)),
            ("store_commit", ms(2)),
            ("nft_transaction", ms(1)),
            ("cnm", ms(9)),
        ]));
        let d = after.since(&before);
        assert_eq!(d.0["kernel"], ms(2));
        assert_eq!(
            d.phases(ms(10)),
            vec![
                ("kernel", ms(3)),
                ("firewall", ms(1)),
                ("store", ms(1)),
                (BOOKKEEPING, ms(5)),
            ]
        );
        // Spans can add up to more than the wall time measured outside (clock skew between
        // threads): bookkeeping is then zero, not negative.
        assert_eq!(d.phases(ms(2))[3], (BOOKKEEPING, Duration::ZERO));
    }
}
