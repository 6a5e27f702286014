//! [`Stats`]: a cheap live snapshot of a pool, and the counters behind it.
//!
//! The pool pays for counting, not for reading: a finished chunk adds to a few relaxed atomics
//! (no lock, no allocation), and times are taken from what the workers measure anyway, or from a
//! sample of the chunks (see [`Counters::sample`]). [`AsyncPool::stats`](crate::AsyncPool::stats)
//! reads them, and does the arithmetic, when asked.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

pub(crate) use super::cause::{CAUSES, Cause};
use super::meters::Meters;

/// How many workers were replaced, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Restarts {
    /// Workers that died (a signal, `abort`, `exit`).
    pub died: u64,
    /// Workers killed (or threads abandoned) for a task past its deadline.
    pub timed_out: u64,
    /// Workers killed because a task of a dropped call ran on them.
    pub cancelled: u64,
    /// Workers killed for breaking the wire protocol.
    pub protocol: u64,
    /// Workers that retired at the end of their `worker_lifespan`.
    pub lifespan: u64,
    /// Workers that retired for their `worker_max_memory`.
    pub memory: u64,
}

impl Restarts {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.died + self.timed_out + self.cancelled + self.protocol + self.lifespan + self.memory
    }
}

/// A distribution of durations in power-of-two buckets: bucket `i` counts durations from `2^i`
/// to `2^(i+1)` nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum_ns: u64,
}

impl Histogram {
    /// How many durations it holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their mean, if there are any.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_ns / self.count))
    }

    /// The duration below which a fraction `q` of them fall (`0.5`: the median), as the upper
    /// edge of its bucket: within a factor of two.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos(upper(i)));
            }
        }
        Some(Duration::from_nanos(upper(
            self.buckets.len().saturating_sub(1),
        )))
    }

    /// The non-empty buckets: each one's upper edge and count.
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| (Duration::from_nanos(upper(i)), n))
    }
}

impl Histogram {
    /// Both histograms' durations in one.
    fn merge(mut self, other: Histogram) -> Histogram {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self
    }
}

fn upper(bucket: usize) -> u64 {
    1u64.checked_shl(bucket as u32 + 1).unwrap_or(u64::MAX)
}

const BUCKETS: usize = 48;

/// The atomics behind a [`Histogram`]: two updates a record.
pub(crate) struct Buckets {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Buckets {
    /// Records `n` durations of `each`.
    pub(crate) fn record(&self, each: Duration, n: u64) {
        self.record_ns(each.as_nanos() as u64, n);
    }

    /// Records `n` durations of `each` nanoseconds.
    #[inline]
    pub(crate) fn record_ns(&self, each: u64, n: u64) {
        if n == 0 {
            return;
        }
        let ns = each.max(1);
        let bucket = (63 - ns.leading_zeros() as usize).min(BUCKETS - 1);
        self.counts[bucket].fetch_add(n, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> Histogram {
        let buckets: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let last = buckets.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
        Histogram {
            count: buckets.iter().sum(),
            buckets: buckets[..last].to_vec(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A pool's counters: what [`Stats`] is read from. What every batch of results counts is kept
/// per worker, each worker's on its own cache lines, so that workers delivering side by side
/// never contend; `read` adds them up.
pub(crate) struct Counters {
    pub started: Instant,
    pub retried: AtomicU64,
    restarts: [AtomicU64; CAUSES],
    pub waiting: Buckets,
    pub end_to_end: Buckets,
    shards: Box<[Shard]>,
    meters: Meters,
}

/// One worker's counts. A batch of results updates two atomics: its tasks are counted, and
/// their time summed, by the running-time histogram.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    failed: AtomicU64,
    timed_out: AtomicU64,
    /// Nanoseconds the worker spent on batches of failures only (the rest is in `running`).
    failed_busy_ns: AtomicU64,
    running: Buckets,
}

impl Counters {
    /// The counters of pool `pool` (its name), of `workers` workers.
    pub(crate) fn new(pool: &str, workers: usize) -> Self {
        Counters {
            started: Instant::now(),
            retried: AtomicU64::new(0),
            restarts: std::array::from_fn(|_| AtomicU64::new(0)),
            waiting: Buckets::default(),
            end_to_end: Buckets::default(),
            shards: (0..workers.max(1)).map(|_| Shard::default()).collect(),
            meters: Meters::new(pool),
        }
    }

    /// A worker was replaced because of `cause`.
    pub(crate) fn restarted(&self, cause: Cause) {
        self.meters.restarted(cause);
        self.restarts[cause as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether chunk number `seq` of a call whose tasks take `ns_per_task` (0: not known yet)
    /// is timed end to end (two clock reads): every chunk until the call's task time is known,
    /// and after that every chunk of tasks long enough that the reads are lost in them, and one
    /// chunk in 32 of tiny ones.
    pub(crate) fn sample(seq: u64, ns_per_task: u64) -> bool {
        ns_per_task == 0 || ns_per_task >= 20_000 || seq % 32 == 0
    }

    /// `len` tasks finished on `worker` (if it is known), `failed` of them failing
    /// (`timed_out` by their deadline), in `busy` of the worker's time.
    pub(crate) fn finished(
        &self,
        worker: Option<usize>,
        len: usize,
        failed: usize,
        timed_out: usize,
        busy: Duration,
    ) {
        self.meters.finished(len, failed, timed_out, busy);
        let shard = match worker {
            Some(w) if w < self.shards.len() => &self.shards[w],
            _ => &self.shards[0],
        };
        // The tasks that answered ran `busy` between them (a batch faster than the worker's
        // clock reads as zero).
        let answered = len - failed;
        if answered > 0 {
            let each = busy.as_nanos() as u64 / answered as u64;
            shard.running.record_ns(each, answered as u64);
        } else if !busy.is_zero() {
            shard
                .failed_busy_ns
                .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        }
        if failed > 0 {
            shard.failed.fetch_add(failed as u64, Ordering::Relaxed);
            shard
                .timed_out
                .fetch_add(timed_out as u64, Ordering::Relaxed);
        }
    }

    /// A sampled chunk of `len` tasks was submitted at `submitted` and finished now, after
    /// `busy` of work. Its tasks waited, on average, for the chunk to start and then for half of
    /// the tasks before them in the chunk.
    pub(crate) fn timed(&self, submitted: Instant, len: usize, busy: Duration) {
        let end_to_end = submitted.elapsed();
        let len = len.max(1);
        let behind = busy.mul_f64((len - 1) as f64 / (2 * len) as f64);
        self.end_to_end.record(end_to_end, len as u64);
        self.waiting
            .record(end_to_end.saturating_sub(busy) + behind, len as u64);
    }

    /// A snapshot; `queued` and `in_flight` are counted by the caller, under the pool's lock.
    pub(crate) fn read(&self, workers: usize, queued: usize, in_flight: usize) -> Stats {
        let r = |c: Cause| self.restarts[c as usize].load(Ordering::Relaxed);
        let sum = |c: fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|s| c(s).load(Ordering::Relaxed))
                .sum()
        };
        let elapsed = self.started.elapsed();
        let running = self
            .shards
            .iter()
            .map(|s| s.running.read())
            .fold(Histogram::default(), Histogram::merge);
        let busy = Duration::from_nanos(running.sum_ns + sum(|s| &s.failed_busy_ns));
        let capacity = elapsed.as_secs_f64() * workers as f64;
        Stats {
            queued,
            in_flight,
            done: running.count,
            failed: sum(|s| &s.failed),
            timed_out: sum(|s| &s.timed_out),
            retried: self.retried.load(Ordering::Relaxed),
            restarts: Restarts {
                died: r(Cause::Died),
                timed_out: r(Cause::Timeout),
                cancelled: r(Cause::Cancelled),
                protocol: r(Cause::Protocol),
                lifespan: r(Cause::Lifespan),
                memory: r(Cause::Memory),
            },
            busy,
            elapsed,
            utilisation: match capacity > 0.0 {
                true => (busy.as_secs_f64() / capacity).min(1.0),
                false => 0.0,
            },
            waiting: self.waiting.read(),
            running,
            end_to_end: self.end_to_end.read(),
        }
    }
}

/// A live snapshot of a pool: [`AsyncPool::stats`](crate::AsyncPool::stats).
///
/// Counts are since the pool was built. Time distributions are per task: running time from what
/// the workers measure of the tasks whose results they send (a chunk's time shared among its
/// tasks); waiting and end-to-end time from the chunks of a call until its task time is known,
/// then from every chunk of tasks that take 20 µs or more and one chunk in 32 of shorter ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks waiting in the pool's queue.
    pub queued: usize,
    /// Tasks sent to workers and not finished (running, or waiting in a worker's pipe).
    pub in_flight: usize,
    /// Tasks that succeeded.
    pub done: u64,
    /// Tasks that failed, for any reason...
    pub failed: u64,
    /// ...of which by running past their deadline.
    pub timed_out: u64,
    /// Tasks run again after their worker died (`max_retries`).
    pub retried: u64,
    /// Workers replaced, by cause.
    pub restarts: Restarts,
    /// Time the workers spent running tasks, all together.
    #[serde(serialize_with = "crate::human::seconds")]
    pub busy: Duration,
    /// Time since the pool was built.
    #[serde(serialize_with = "crate::human::seconds")]
    pub elapsed: Duration,
    /// `busy` over `elapsed` times the number of workers, between 0 and 1.
    pub utilisation: f64,
    /// From a task's chunk being queued to the task's start (a chunk's tasks are counted at
    /// its mean: the wait for the chunk, and half of the time its earlier tasks ran).
    pub waiting: Histogram,
    /// A task's own time on its worker (of the tasks that returned a value: a batch of results
    /// counts each of its tasks as the batch's mean).
    pub running: Histogram,
    /// From a task's chunk being queued to its result.
    pub end_to_end: Histogram,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tasks: {} done, {} failed ({} timed out), {} retried; {} queued, {} in flight",
            self.done, self.failed, self.timed_out, self.retried, self.queued, self.in_flight
        )?;
        writeln!(
            f,
            "workers: {:.1}% busy over {:.0?}; {} restarts",
            self.utilisation * 100.0,
            self.elapsed,
            self.restarts.total()
        )?;
        for (name, h) in [
            ("waiting", &self.waiting),
            ("running", &self.running),
            ("end to end", &self.end_to_end),
        ] {
            match (h.quantile(0.5), h.quantile(0.99)) {
                (Some(p50), Some(p99)) => {
                    writeln!(f, "{name}: median < {p50:.0?}, 99% < {p99:.0?}")?
                }
                _ => writeln!(f, "{name}: no samples")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_and_ranks() {
        let b = Buckets::default();
        b.record(Duration::from_micros(1), 90);
        b.record(Duration::from_millis(1), 10);
        let h = b.read();
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(1) && p50 <= Duration::from_micros(2),
            "{p50:?}"
        );
        let p99 = h.quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_millis(1) && p99 <= Duration::from_millis(2),
            "{p99:?}"
        );
        assert_eq!(h.buckets().count(), 2);
        assert_eq!(Buckets::default().read().quantile(0.5), None);
    }

    #[test]
    fn counters_add_up() {
        let c = Counters::new("test", 2);
        c.finished(Some(1), 10, 2, 1, Duration::from_millis(10));
        c.finished(Some(0), 4, 0, 0, Duration::from_millis(4));
        c.restarted(Cause::Died);
        c.restarted(Cause::Lifespan);
        let s = c.read(2, 3, 4);
        assert_eq!((s.done, s.failed, s.timed_out), (12, 2, 1));
        assert_eq!((s.queued, s.in_flight), (3, 4));
        assert_eq!(s.restarts.total(), 2);
        assert_eq!(s.running.count(), 12);
        assert_eq!(s.running.mean(), Some(Duration::from_millis(14) / 12));
        assert!(s.utilisation > 0.0 && s.utilisation <= 1.0);
    }
}
