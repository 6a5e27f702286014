//! The pool's counters as the `metrics` facade sees them (feature `metrics`), labelled with the
//! pool's name (`pool`):
//!
//! - `ampire_tasks_total{pool, outcome}` (counter): tasks that finished, by `outcome`: `ok`,
//!   `failed` (a panic, a worker's death, an error of the pool) or `timed_out`;
//! - `ampire_task_seconds{pool}` (histogram): how long tasks that returned a value ran on
//!   their workers (the tasks of a batch of results each count as the batch's mean);
//! - `ampire_queue_depth{pool}` (gauge): tasks queued, not yet sent to a worker;
//! - `ampire_worker_restarts_total{pool, cause}` (counter): workers replaced, by cause (`died`,
//!   `timed_out`, `cancelled`, `protocol`, `lifespan`, `memory`).
//!
//! The handles are registered once, when the pool is built: install the recorder before.
//! Without the feature, all of this compiles to nothing.

use std::time::Duration;

use super::cause::Cause;

/// A pool's handles.
pub(crate) struct Meters {
    #[cfg(feature = "metrics")]
    on: On,
}

#[cfg(feature = "metrics")]
struct On {
    ok: metrics::Counter,
    failed: metrics::Counter,
    timed_out: metrics::Counter,
    seconds: metrics::Histogram,
    restarts: [metrics::Counter; super::cause::CAUSES],
}

impl Meters {
    /// The handles of pool `pool`.
    pub(crate) fn new(pool: &str) -> Meters {
        let _ = pool;
        Meters {
            #[cfg(feature = "metrics")]
            on: On::new(pool),
        }
    }

    /// `len` tasks finished, `failed` of them failing (`timed_out` of those by their deadline),
    /// having run `busy` in all.
    #[inline]
    pub(crate) fn finished(&self, len: usize, failed: usize, timed_out: usize, busy: Duration) {
        let _ = (len, failed, timed_out, busy);
        #[cfg(feature = "metrics")]
        self.on.finished(len, failed, timed_out, busy);
    }

    /// A worker was replaced because of `cause`.
    pub(crate) fn restarted(&self, cause: Cause) {
        let _ = cause;
        #[cfg(feature = "metrics")]
        self.on.restarts[cause as usize].increment(1);
    }
}

#[cfg(feature = "metrics")]
impl On {
    fn new(pool: &str) -> On {
        let pool = pool.to_owned();
        let tasks = |outcome: &'static str| metrics::counter!("ampire_tasks_total", "pool" => pool.clone(), "outcome" => outcome);
        let causes = [
            Cause::Died,
            Cause::Timeout,
            Cause::Cancelled,
            Cause::Protocol,
            Cause::Lifespan,
            Cause::Memory,
        ];
        On {
            ok: tasks("ok"),
            failed: tasks("failed"),
            timed_out: tasks("timed_out"),
            seconds: metrics::histogram!("ampire_task_seconds", "pool" => pool.clone()),
            restarts: causes.map(|c| {
                metrics::counter!(
                    "ampire_worker_restarts_total", "pool" => pool.clone(), "cause" => c.name()
                )
            }),
        }
    }

    fn finished(&self, len: usize, failed: usize, timed_out: usize, busy: Duration) {
        let ok = len - failed;
        if ok > 0 {
            self.ok.increment(ok as u64);
        }
        if failed > timed_out {
            self.failed.increment((failed - timed_out) as u64);
        }
        if timed_out > 0 {
            self.timed_out.increment(timed_out as u64);
        }
        if ok > 0 {
            self.seconds.record_many(busy.as_secs_f64() / ok as f64, ok);
        }
    }
}

/// The queue's depth gauge.
#[derive(Default)]
pub(crate) struct QueueDepth {
    #[cfg(feature = "metrics")]
    gauge: Option<metrics::Gauge>,
}

impl QueueDepth {
    pub(crate) fn new(pool: &str) -> QueueDepth {
        let _ = pool;
        QueueDepth {
            #[cfg(feature = "metrics")]
            gauge: Some(metrics::gauge!("ampire_queue_depth", "pool" => pool.to_owned())),
        }
    }

    /// `tasks` are queued now.
    #[inline]
    pub(crate) fn set(&self, tasks: usize) {
        let _ = tasks;
        #[cfg(feature = "metrics")]
        if let Some(g) = &self.gauge {
            g.set(tasks as f64);
        }
    }
}
