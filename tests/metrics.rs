//! The `metrics` feature: a pool's task counts by outcome, task durations, queue depth and
//! restarts, read from a recorder installed before the pool is built.
#![cfg(feature = "metrics")]
mod common;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::future::IntoFuture;

use common::*;
use futures_util::{StreamExt, stream};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// One metric's value: a counter's total, a gauge's last value, or a histogram's samples.
#[derive(Default)]
struct Cell {
    total: AtomicU64,
    gauge: Mutex<f64>,
    samples: Mutex<Vec<f64>>,
}

impl metrics::CounterFn for Cell {
    fn increment(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    fn absolute(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, v: f64) {
        *self.gauge.lock().unwrap() += v;
    }
    fn decrement(&self, v: f64) {
        *self.gauge.lock().unwrap() -= v;
    }
    fn set(&self, v: f64) {
        *self.gauge.lock().unwrap() = v;
    }
}

impl metrics::HistogramFn for Cell {
    fn record(&self, v: f64) {
        self.samples.lock().unwrap().push(v);
    }
}

/// Keeps every metric by its name and labels (`name{a=1,b=2}`).
#[derive(Default)]
struct Keeper(Mutex<HashMap<String, Arc<Cell>>>);

impl Keeper {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(id).or_default().clone()
    }

    fn get(&self, id: &str) -> Option<Arc<Cell>> {
        self.0.lock().unwrap().get(id).cloned()
    }
}

impl Recorder for &'static Keeper {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

fn keeper() -> &'static Keeper {
    static KEEPER: OnceLock<&'static Keeper> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let keeper: &'static Keeper = Box::leak(Box::default());
        metrics::set_global_recorder(keeper).expect("the only recorder");
        keeper
    })
}

fn total(id: &str) -> u64 {
    keeper()
        .get(id)
        .map_or(0, |c| c.total.load(Ordering::Relaxed))
}

fn fails_on_7(x: u64) -> u64 {
    assert!(x % 10 != 7, "input {x}");
    x
}

fn kill_self_at_3(x: u64) -> u64 {
    if x == 3 {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    x
}

each_method! {
    async fn tasks_are_counted_by_outcome_with_their_durations(m: StartMethod) {
        keeper();
        let pool = AsyncPool::builder().workers(2).start_method(m).name(format!("metered-{m}"))
            .build().await.unwrap();
        let out: Vec<Result<u64, Error>> = pool.map_stream(fails_on_7, stream::iter(0..100u64)).chunk_size(3).collect().await;
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 10);
        assert_eq!(total(&format!("ampire_tasks_total{{pool=metered-{m},outcome=ok}}")), 90);
        assert_eq!(total(&format!("ampire_tasks_total{{pool=metered-{m},outcome=failed}}")), 10);
        assert_eq!(total(&format!("ampire_tasks_total{{pool=metered-{m},outcome=timed_out}}")), 0);
        let seconds = keeper().get(&format!("ampire_task_seconds{{pool=metered-{m}}}")).unwrap();
        let samples = seconds.samples.lock().unwrap().clone();
        assert_eq!(samples.len(), 90, "one per task that returned");
        assert!(samples.iter().all(|s| *s >= 0.0 && *s < 10.0), "{samples:?}");
        pool.shutdown().await.unwrap();
    }

    async fn the_queue_depth_is_a_gauge(m: StartMethod) {
        keeper();
        let name = format!("queued-{m}");
        let pool = AsyncPool::builder().workers(1).start_method(m).name(&name).build().await.unwrap();
        let depth = || *keeper().get(&format!("ampire_queue_depth{{pool={name}}}")).unwrap().gauge.lock().unwrap();
        // One task holds the only worker; nine wait in the queue.
        let started = Signal::new();
        let gate = gate_path(m, 0);
        let blocked = pool.apply(blocked, (started.path.to_str().unwrap().to_owned(), gate.clone()));
        let blocked = tokio::spawn(blocked.into_future());
        started.recv().await;
        let waiting = tokio::spawn(pool.map(fails_on_7, 0..9u64).chunk_size(1).into_future());
        // The worker holds up to its pipeline's depth; the rest is queued.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let queued = loop {
            let stats = pool.stats();
            if stats.queued + stats.in_flight == 10 && depth() == stats.queued as f64 {
                break stats.queued;
            }
            assert!(std::time::Instant::now() < deadline, "depth {} vs {stats:?}", depth());
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        assert!(queued >= 7, "{queued}");
        release(&gate);
        blocked.await.unwrap().unwrap();
        assert!(waiting.await.unwrap().is_err(), "input 7 fails");
        assert_eq!(depth(), 0.0);
        pool.shutdown().await.unwrap();
    }

    processes async fn restarts_are_counted_by_cause(m: StartMethod) {
        keeper();
        let name = format!("restarted-{m}");
        let pool = AsyncPool::builder().workers(2).start_method(m).name(&name).build().await.unwrap();
        let out: Vec<Result<u64, Error>> = pool.map_stream(kill_self_at_3, stream::iter(0..6u64)).chunk_size(1).collect().await;
        assert!(out[3].as_ref().unwrap_err().is_worker_died());
        assert_eq!(total(&format!("ampire_worker_restarts_total{{pool={name},cause=died}}")), 1);
        assert_eq!(total(&format!("ampire_tasks_total{{pool={name},outcome=failed}}")), 1);
        assert_eq!(total(&format!("ampire_tasks_total{{pool={name},outcome=ok}}")), 5);
        pool.shutdown().await.unwrap();
    }
}
