//! Worker insights (MPIRE's `enable_insights`): how each worker spent its time, how many tasks
//! it ran, and the slowest tasks, with their inputs.
//!
//! Start-up, `worker_init` and `worker_exit` times are measured by the pool; working time is what
//! the workers measure of their tasks anyway; waiting time is the rest of a worker's life. With
//! insights on, a worker also times its tasks one by one (two clock reads a task) while they
//! take 5 µs or more on average, and one batch in 64 of shorter ones (see `worker::probe`),
//! reads its CPU time at most once a millisecond, and reports a task when it is among its five
//! slowest so far (with the `Debug` of its input, under process methods; a thread worker's input
//! was moved into the task). With [`Builder::insights_memory`](crate::Builder::insights_memory), it also resets and
//! reads its peak resident memory around each task.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::human::{bytes, hms};

/// How many of the slowest tasks are kept: as many as a worker reports.
pub(crate) use crate::worker::SLOWEST;

/// What the pool measures of one worker slot, over the lives of the workers in it.
#[derive(Default)]
pub(crate) struct Slot {
    start_up_ns: AtomicU64,
    init_ns: AtomicU64,
    working_ns: AtomicU64,
    exit_ns: AtomicU64,
    cpu_ns: AtomicU64,
    tasks: AtomicU64,
    peak_memory: AtomicU64,
    /// Time its workers were alive and ready, and since when the current one is.
    alive: Mutex<(Duration, Option<Instant>)>,
    /// When the worker leaving started its exit function.
    exiting: Mutex<Option<Instant>>,
}

/// The insights of a pool: one [`Slot`] per worker, and the slowest tasks.
pub(crate) struct Slots {
    slots: Vec<Slot>,
    slowest: Mutex<Vec<SlowTask>>,
}

impl Slots {
    pub(crate) fn new(workers: usize) -> Slots {
        Slots {
            slots: (0..workers).map(|_| Slot::default()).collect(),
            slowest: Mutex::new(Vec::new()),
        }
    }

    fn add(cell: &AtomicU64, d: Duration) {
        cell.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A worker of `slot` started, in `start_up`, and ran `worker_init` in `init`; it is ready.
    pub(crate) fn started(&self, slot: usize, start_up: Duration, init: Duration) {
        let s = &self.slots[slot];
        Slots::add(&s.start_up_ns, start_up);
        Slots::add(&s.init_ns, init);
        s.alive.lock().unwrap_or_else(PoisonError::into_inner).1 = Some(Instant::now());
    }

    /// The worker of `slot` stopped taking tasks (it leaves, retires or died).
    pub(crate) fn stopped(&self, slot: usize) {
        let mut alive = self.slots[slot]
            .alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = alive.1.take() {
            alive.0 += since.elapsed();
        }
    }

    /// The worker of `slot` starts its exit function.
    pub(crate) fn exit_started(&self, slot: usize) {
        self.stopped(slot);
        *self.slots[slot]
            .exiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// The worker of `slot` finished its exit function.
    pub(crate) fn exited(&self, slot: usize) {
        let started = self.slots[slot]
            .exiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = started {
            Slots::add(&self.slots[slot].exit_ns, t.elapsed());
        }
    }

    /// The worker of `slot` ran `tasks` tasks in `busy`, using `cpu` of processor time.
    pub(crate) fn worked(&self, slot: usize, tasks: usize, busy: Duration, cpu: Duration) {
        let s = &self.slots[slot];
        s.tasks.fetch_add(tasks as u64, Ordering::Relaxed);
        Slots::add(&s.working_ns, busy);
        Slots::add(&s.cpu_ns, cpu);
    }

    /// A task of the worker of `slot` was among its slowest.
    pub(crate) fn slow(&self, task: SlowTask) {
        if let Some(peak) = task.peak_memory {
            self.slots[task.worker]
                .peak_memory
                .fetch_max(peak, Ordering::Relaxed);
        }
        let mut slowest = self.slowest.lock().unwrap_or_else(PoisonError::into_inner);
        slowest.push(task);
        slowest.sort_by_key(|t| std::cmp::Reverse(t.duration));
        slowest.truncate(SLOWEST);
    }

    pub(crate) fn read(&self) -> Insights {
        let d = |c: &AtomicU64| Duration::from_nanos(c.load(Ordering::Relaxed));
        let workers = self
            .slots
            .iter()
            .map(|s| {
                let (alive, since) = *s.alive.lock().unwrap_or_else(PoisonError::into_inner);
                let alive = alive + since.map_or(Duration::ZERO, |t| t.elapsed());
                let working = d(&s.working_ns);
                let peak = s.peak_memory.load(Ordering::Relaxed);
                WorkerInsights {
                    tasks: s.tasks.load(Ordering::Relaxed),
                    start_up: d(&s.start_up_ns),
                    init: d(&s.init_ns),
                    waiting: alive.saturating_sub(working),
                    working,
                    exit: d(&s.exit_ns),
                    cpu: d(&s.cpu_ns),
                    peak_memory: (peak > 0).then_some(peak),
                }
            })
            .collect();
        Insights {
            workers,
            slowest: self
                .slowest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// One of the slowest tasks of a pool.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SlowTask {
    /// How long it ran.
    #[serde(serialize_with = "crate::human::seconds")]
    pub duration: Duration,
    /// The worker that ran it.
    pub worker: usize,
    /// Its index in its call's input.
    pub index: usize,
    /// Its input's `Debug` (cut at about 1 KiB), under process start methods.
    pub input: Option<String>,
    /// Processor time it used, when the worker measured it.
    #[serde(serialize_with = "crate::human::maybe_seconds")]
    pub cpu: Option<Duration>,
    /// Its worker's peak resident memory while it ran, in bytes
    /// ([`Builder::insights_memory`](crate::Builder::insights_memory)).
    pub peak_memory: Option<u64>,
}

/// How one worker slot spent its time (over every worker that ran in it).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerInsights {
    /// Tasks it ran.
    pub tasks: u64,
    /// From being started to saying hello.
    #[serde(serialize_with = "crate::human::seconds")]
    pub start_up: Duration,
    /// In `worker_init` (and decoding the shared object).
    #[serde(serialize_with = "crate::human::seconds")]
    pub init: Duration,
    /// Ready, and not running a task.
    #[serde(serialize_with = "crate::human::seconds")]
    pub waiting: Duration,
    /// Running tasks.
    #[serde(serialize_with = "crate::human::seconds")]
    pub working: Duration,
    /// In `worker_exit`.
    #[serde(serialize_with = "crate::human::seconds")]
    pub exit: Duration,
    /// Processor time its tasks used (process workers).
    #[serde(serialize_with = "crate::human::seconds")]
    pub cpu: Duration,
    /// Its peak resident memory while running a task, in bytes
    /// ([`Builder::insights_memory`](crate::Builder::insights_memory)).
    pub peak_memory: Option<u64>,
}

impl WorkerInsights {
    fn parts(&self) -> [Duration; 5] {
        [
            self.start_up,
            self.init,
            self.waiting,
            self.working,
            self.exit,
        ]
    }

    fn total(&self) -> Duration {
        self.parts().iter().sum()
    }
}

/// A pool's worker insights: [`AsyncPool::insights`](crate::AsyncPool::insights). Its `Display`
/// is MPIRE's `print_insights`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Insights {
    /// One per worker slot.
    pub workers: Vec<WorkerInsights>,
    /// The slowest tasks, slowest first (at most five).
    pub slowest: Vec<SlowTask>,
}

const PARTS: [&str; 5] = ["start up", "init", "waiting", "working", "exit"];

impl Insights {
    /// Tasks all workers ran.
    pub fn tasks(&self) -> u64 {
        self.workers.iter().map(|w| w.tasks).sum()
    }

    /// The time of all workers together.
    pub fn total(&self) -> Duration {
        self.workers.iter().map(WorkerInsights::total).sum()
    }

    /// Part `i` of the lives (start up, init, waiting, working, exit): its total over the
    /// workers, mean and standard deviation per worker, and share of the total time.
    fn part(&self, i: usize) -> (Duration, Duration, Duration, f64) {
        let values: Vec<f64> = self
            .workers
            .iter()
            .map(|w| w.parts()[i].as_secs_f64())
            .collect();
        let n = values.len().max(1) as f64;
        let total: f64 = values.iter().sum();
        let mean = total / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let all = self.total().as_secs_f64();
        (
            Duration::from_secs_f64(total),
            Duration::from_secs_f64(mean),
            Duration::from_secs_f64(var.sqrt()),
            total / (all + 1e-8),
        )
    }

    /// The share of the workers' time spent running tasks.
    pub fn working_ratio(&self) -> f64 {
        self.part(3).3
    }
}

impl fmt::Display for Insights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "WorkerPool insights")?;
        writeln!(f, "-------------------")?;
        writeln!(f, "Total number of tasks completed: {}", self.tasks())?;
        for (i, name) in PARTS.iter().enumerate() {
            let (total, mean, std, ratio) = self.part(i);
            writeln!(
                f,
                "Total {name} time: {}s (mean: {}, std: {}, ratio: {:.2}%)",
                hms(total),
                hms(mean),
                hms(std),
                ratio * 100.0
            )?;
        }
        if self.working_ratio() < 0.8 {
            writeln!(f)?;
            writeln!(f, "Efficiency warning: working ratio is < 80%!")?;
        }
        writeln!(f)?;
        writeln!(f, "Stats per worker")?;
        writeln!(f, "----------------")?;
        for (id, w) in self.workers.iter().enumerate() {
            write!(f, "Worker {id} - Tasks completed: {}", w.tasks)?;
            for (name, d) in PARTS.iter().zip(w.parts()) {
                write!(f, " - {name}: {}s", hms(d))?;
            }
            if !w.cpu.is_zero() {
                write!(f, " - cpu: {}s", hms(w.cpu))?;
            }
            if let Some(peak) = w.peak_memory {
                write!(f, " - peak memory: {}", bytes(peak))?;
            }
            writeln!(f)?;
        }
        writeln!(f)?;
        writeln!(f, "Top 5 longest tasks")?;
        write!(f, "-------------------")?;
        for (i, t) in self.slowest.iter().enumerate() {
            write!(
                f,
                "\n{}. Time: {} - worker {}, task {}",
                i + 1,
                hms(t.duration),
                t.worker,
                t.index
            )?;
            if let Some(input) = &t.input {
                write!(f, ": {input}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// MPIRE's `test_get_insights`, its numbers and its expected formatting.
    #[test]
    fn mpire_get_insights() {
        let worker = |tasks, s: [f64; 5]| WorkerInsights {
            tasks,
            start_up: secs(s[0]),
            init: secs(s[1]),
            waiting: secs(s[2]),
            working: secs(s[3]),
            exit: secs(s[4]),
            cpu: Duration::ZERO,
            peak_memory: None,
        };
        let slow = |d: f64, input: &str| SlowTask {
            duration: secs(d),
            worker: 0,
            index: 0,
            input: Some(input.into()),
            cpu: None,
            peak_memory: None,
        };
        let insights = Insights {
            workers: vec![
                worker(2, [0.1, 0.11, 0.4, 42.0, 0.33]),
                worker(3, [0.2, 0.22, 0.3, 37.0, 0.44]),
            ],
            slowest: vec![
                slow(6.0, "3"),
                slow(2.0, "2"),
                slow(1.0, "1"),
                slow(0.8, "4"),
                slow(0.1, "5"),
            ],
        };
        assert_eq!(insights.tasks(), 5);
        assert_eq!(hms(insights.total()), "0:01:21.100");
        let expect = [
            ("0:00:00.300", "0:00:00.150", "0:00:00.050"),
            ("0:00:00.330", "0:00:00.165", "0:00:00.055"),
            ("0:00:00.700", "0:00:00.350", "0:00:00.050"),
            ("0:01:19", "0:00:39.500", "0:00:02.500"),
            ("0:00:00.770", "0:00:00.385", "0:00:00.055"),
        ];
        for (i, (total, mean, std)) in expect.iter().enumerate() {
            let (t, m, s, r) = insights.part(i);
            // Within a millisecond: the figures are sums of floating-point seconds.
            let close = |d: Duration, want: &str| {
                let got = hms(d);
                got == *want || hms(d + Duration::from_micros(500)) == *want
            };
            assert!(
                close(t, total) && close(m, mean) && close(s, std),
                "part {i}: {t:?} {m:?} {s:?}"
            );
            let totals = [0.3, 0.33, 0.7, 79.0, 0.77];
            let want = totals[i] / totals.iter().sum::<f64>();
            assert!((r - want).abs() < 1e-6, "part {i}: {r} vs {want}");
        }
        let text = insights.to_string();
        assert!(
            text.starts_with(
                "WorkerPool insights\n-------------------\nTotal number of tasks completed: 5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "Total working time: 0:01:19s (mean: 0:00:39.500, std: 0:00:02.500, ratio: 97.41%)"
            ),
            "{text}"
        );
        assert!(!text.contains("Efficiency warning"), "{text}");
        assert!(
            text.contains("Worker 1 - Tasks completed: 3 - start up: 0:00:00.200s"),
            "{text}"
        );
        assert!(
            text.contains("1. Time: 0:00:06 - worker 0, task 0: 3"),
            "{text}"
        );
        assert!(
            text.contains("5. Time: 0:00:00.100 - worker 0, task 0: 5"),
            "{text}"
        );
    }
}
