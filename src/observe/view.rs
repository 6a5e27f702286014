//! A snapshot of each pool of this process, its workers and its running calls: what the
//! dashboard serves. Compiled always, read only with the `dashboard` feature.

use std::time::Duration;

use serde::Serialize;

use super::{Insights, Stats, registry};

/// What a pool tells about itself beyond its counters: its workers, and its stats (which need
/// its lock). Implemented by the pool's engine.
pub(crate) trait Source: Send + Sync {
    fn workers(&self) -> Vec<WorkerView>;
    fn stats(&self) -> Stats;
}

/// A snapshot of every live pool of this process.
pub(crate) fn snapshot() -> Vec<PoolView> {
    let entries = registry::live();
    entries
        .into_iter()
        .map(|(o, source)| PoolView {
            id: o.id,
            name: o.name.clone(),
            site: o.site.to_string(),
            method: o.method,
            parent: o.parent.map(|(pool, worker)| ParentView { pool, worker }),
            workers: source.workers(),
            calls: o.calls().iter().map(|c| CallView::of(c)).collect(),
            stats: source.stats(),
            insights: o.insights.as_ref().map(|i| i.read()),
        })
        .collect()
}

/// A pool, as the dashboard shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PoolView {
    pub id: u64,
    pub name: String,
    /// Where it was built.
    pub site: String,
    pub method: &'static str,
    /// The pool and worker it runs in, for a pool nested in a thread worker of this process.
    pub parent: Option<ParentView>,
    pub workers: Vec<WorkerView>,
    pub calls: Vec<CallView>,
    pub stats: Stats,
    pub insights: Option<Insights>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct ParentView {
    pub pool: u64,
    pub worker: usize,
}

/// A worker slot, now.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct WorkerView {
    pub id: usize,
    /// Its process, for a process worker that runs now (on its host, for a remote one: the
    /// pid of its launcher here otherwise).
    pub pid: Option<u32>,
    /// The host it runs on, when a launcher names it.
    pub host: Option<String>,
    /// `starting`, `idle` or `busy`.
    pub state: &'static str,
    /// How long the job it runs has run.
    pub task_age: Option<f64>,
    /// How many times a worker was started again in this slot.
    pub restarts: u64,
    /// How the last worker before this one ended.
    pub last_exit: Option<String>,
}

/// A call, now.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CallView {
    pub id: u64,
    pub kind: &'static str,
    /// Where it was made.
    pub site: String,
    pub done: u64,
    pub failed: u64,
    pub total: Option<u64>,
    /// Tasks per second since it started.
    pub rate: f64,
    /// Seconds left at that rate, when the total is known.
    pub eta: Option<f64>,
    /// Seconds since it started.
    pub elapsed: f64,
    /// Calls of pools nested in its workers (in worker processes too), as their progress
    /// events tell.
    pub nested: Vec<super::progress::NestedView>,
}

impl CallView {
    pub(crate) fn of(c: &super::CallProgress) -> CallView {
        let (done, failed, total) = c.counts();
        let elapsed = c.started.elapsed();
        let rate = rate(done + failed, elapsed);
        CallView {
            id: c.id,
            kind: c.kind,
            site: c.site.to_string(),
            done,
            failed,
            total,
            rate,
            eta: total
                .filter(|_| rate > 0.0)
                .map(|t| t.saturating_sub(done + failed) as f64 / rate),
            elapsed: elapsed.as_secs_f64(),
            nested: super::progress::nested_under(c),
        }
    }
}

fn rate(n: u64, over: Duration) -> f64 {
    match over.as_secs_f64() {
        s if s > 0.0 => n as f64 / s,
        _ => 0.0,
    }
}
