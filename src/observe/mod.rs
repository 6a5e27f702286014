//! Seeing the work: what a pool counts as it runs (`stats`), what its workers measure when asked
//! (`insights`), each call's progress (`progress`, drawn as bars), the output of process workers
//! (`output`), and the process's pools, for the dashboard (`registry`).
//!
//! Everything here is fed by the pool's engine and read by whoever asks; the engine pays for
//! counting (relaxed atomics per chunk), never for reading.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

pub(crate) mod cause;
pub(crate) mod insights;
pub(crate) mod meters;
pub(crate) mod output;
pub(crate) mod progress;
pub(crate) mod registry;
pub(crate) mod stats;
pub(crate) mod trace;
#[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
pub(crate) mod view;

pub use insights::{Insights, SlowTask, WorkerInsights};
pub use stats::{Histogram, Restarts, Stats};

use insights::Slots;
use stats::Counters;

/// What a pool shares with everything that watches it.
pub(crate) struct Observer {
    /// Unique in this process.
    pub id: u64,
    pub name: String,
    pub method: &'static str,
    /// Where the pool was built.
    pub site: &'static Location<'static>,
    /// The pool and worker this pool runs in, when it is a nested pool of a thread worker.
    pub parent: Option<(u64, usize)>,
    /// Its `tracing` span: what it logs is inside.
    pub span: tracing::Span,
    pub counters: Counters,
    /// Per-worker measurements, when insights are on.
    pub insights: Option<Slots>,
    /// The calls made, the ended ones swept out whenever the list doubled since the last sweep
    /// (so that a call costs the same, however many run).
    calls: Mutex<(Vec<Weak<CallProgress>>, usize)>,
    next_call: AtomicU64,
    /// Where this pool's bars are drawn, when not on the process's stderr (tests).
    draw: Option<indicatif::MultiProgress>,
}

impl Observer {
    pub(crate) fn new(
        name: Option<String>,
        method: &'static str,
        workers: usize,
        site: &'static Location<'static>,
        insights: bool,
        draw: Option<indicatif::MultiProgress>,
    ) -> Arc<Observer> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = name.unwrap_or_else(|| format!("pool {id}"));
        let (span, counters) = (
            trace::pool_span(id, &name, method),
            Counters::new(&name, workers),
        );
        let observer = Arc::new(Observer {
            id,
            span,
            name,
            method,
            site,
            parent: registry::enclosing(),
            counters,
            insights: insights.then(|| Slots::new(workers)),
            calls: Mutex::new((Vec::new(), 16)),
            next_call: AtomicU64::new(1),
            draw,
        });
        registry::register(&observer);
        observer
    }

    /// A new call of this pool, watched until it is dropped.
    pub(crate) fn call(
        &self,
        kind: &'static str,
        site: &'static Location<'static>,
    ) -> Arc<CallProgress> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let call = Arc::new(CallProgress {
            id,
            span: trace::call_span(&self.span, id, kind, site),
            kind,
            site,
            started: Instant::now(),
            total: AtomicU64::new(UNKNOWN),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bar: OnceLock::new(),
        });
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let (list, sweep_at) = &mut *calls;
        if list.len() >= *sweep_at {
            list.retain(|c| c.strong_count() > 0);
            *sweep_at = (list.len() * 2).max(16);
        }
        list.push(Arc::downgrade(&call));
        call
    }

    /// Where this pool's bars are drawn.
    pub(crate) fn multi(&self) -> &indicatif::MultiProgress {
        match &self.draw {
            Some(multi) => multi,
            None => progress::multi(),
        }
    }

    /// Where this pool's bars are drawn, when it was given a place of its own.
    pub(crate) fn draw_target(&self) -> Option<&indicatif::MultiProgress> {
        self.draw.as_ref()
    }

    /// The calls running now.
    pub(crate) fn calls(&self) -> Vec<Arc<CallProgress>> {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.0.iter().filter_map(Weak::upgrade).collect()
    }
}

/// `total` of a call whose input's length is unknown.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// How far one call has got: counted as its tasks finish, whoever reads it.
pub(crate) struct CallProgress {
    pub id: u64,
    /// `apply`, `map`, `map_unordered`, `map_stream` or `map_stream_unordered`.
    pub kind: &'static str,
    /// Where the call was made.
    pub site: &'static Location<'static>,
    pub started: Instant,
    /// How many tasks it has (`UNKNOWN` until its input ended, when it is not known before).
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    /// Its `tracing` span, inside its pool's.
    pub span: tracing::Span,
    /// Its progress bar, when it asked for one; set before its first task is submitted.
    pub bar: OnceLock<progress::Bar>,
}

impl CallProgress {
    /// `len` more tasks finished, `failed` of them failing.
    pub(crate) fn finished(&self, len: usize, failed: usize) {
        self.done.fetch_add(len as u64, Ordering::Relaxed);
        if failed > 0 {
            self.failed.fetch_add(failed as u64, Ordering::Relaxed);
        }
        if let Some(bar) = self.bar.get() {
            bar.update(self);
        }
    }

    /// The call knows now how many tasks it has.
    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(bar) = self.bar.get() {
            bar.update(self);
        }
    }

    /// The call ended: its bar (if it has one) says how.
    pub(crate) fn close(&self, how: progress::Close) {
        let (done, failed, _) = self.counts();
        trace::call_ended(&self.span, self.kind, how.name(), done, failed);
        if let Some(bar) = self.bar.get() {
            bar.close(self, how);
        }
    }

    /// Tasks finished, failed, and in all (if known).
    pub(crate) fn counts(&self) -> (u64, u64, Option<u64>) {
        let total = self.total.load(Ordering::Relaxed);
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            (total != UNKNOWN).then_some(total),
        )
    }
}
