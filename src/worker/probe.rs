//! What a worker measures of its tasks when the pool's insights are on: each task's time (two
//! clock reads), its processor time (the thread's, read at most once a millisecond), and
//! optionally its peak resident memory (reset before each task and read after it, a few
//! microseconds each). A task among the worker's five slowest so far is reported.
//!
//! Two clock reads cost about 40 ns, which is most of a tiny task. So tasks are timed one by one
//! only while they take [`PER_TASK_FROM`] or more on average: a batch whose first
//! [`PROBE_FIRST`] tasks are shorter is left untimed after them, and so are the next batches of
//! such tasks but one in [`SAMPLE_EVERY`]. The time the worker spends working comes from the
//! batches, which are always timed; only the slowest tasks come from those timed one by one.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

/// How often the thread's processor time is read, at most.
const CPU_EVERY: Duration = Duration::from_millis(1);

/// How many tasks a worker reports as its slowest, at most at any time (and insights keep).
pub(crate) const SLOWEST: usize = 5;

/// Tasks are timed one by one while they take this long on average.
const PER_TASK_FROM: Duration = Duration::from_micros(5);

/// How many tasks of a batch are timed before it is known whether its tasks are short.
const PROBE_FIRST: u32 = 32;

/// Of batches of short tasks, one in this many is timed one by one.
const SAMPLE_EVERY: u32 = 64;

/// A task worth reporting: how long it ran, and what it used.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Measured {
    pub time: Duration,
    pub cpu: Option<Duration>,
    pub peak_memory: Option<u64>,
}

/// A worker's measurements.
pub(crate) struct Probe {
    /// When the running task started.
    t0: Instant,
    /// The five longest task times so far, shortest first.
    slowest: Vec<Duration>,
    /// The thread's processor time at the last read, and when that was.
    cpu_at: Duration,
    cpu_read: Instant,
    /// Processor time read and not yet reported.
    cpu_unreported: Duration,
    /// Batch time since the processor time was last read, when tasks are not timed one by one.
    busy_since_cpu: Duration,
    memory: Option<Memory>,
    /// Whether the tasks that start now are timed one by one.
    per_task: bool,
    /// Of the batch running: how many of its tasks were timed, and their time.
    timed: u32,
    timed_sum: Duration,
    /// Batches done.
    batches: u32,
}

struct Memory {
    clear_refs: File,
    status: File,
}

impl Probe {
    /// A probe; `memory` also measures each task's peak resident memory.
    pub(crate) fn new(memory: bool) -> Probe {
        let memory = memory
            .then(|| {
                Some(Memory {
                    clear_refs: File::options()
                        .write(true)
                        .open("/proc/self/clear_refs")
                        .ok()?,
                    status: File::open("/proc/self/status").ok()?,
                })
            })
            .flatten();
        Probe {
            t0: Instant::now(),
            slowest: Vec::with_capacity(SLOWEST),
            cpu_at: thread_cpu(),
            cpu_read: Instant::now(),
            cpu_unreported: Duration::ZERO,
            busy_since_cpu: Duration::ZERO,
            memory,
            per_task: true,
            timed: 0,
            timed_sum: Duration::ZERO,
            batches: 0,
        }
    }

    /// A batch of `tasks` ran in `busy` (the worker always times its batches): whether the
    /// next batch is timed task by task is decided now, and the processor time read if due.
    pub(crate) fn batch_done(&mut self, busy: Duration, tasks: u32) {
        self.batches = self.batches.wrapping_add(1);
        let mean = busy / tasks.max(1);
        self.per_task = mean >= PER_TASK_FROM || self.batches % SAMPLE_EVERY == 0;
        (self.timed, self.timed_sum) = (0, Duration::ZERO);
        self.busy_since_cpu += busy;
        if self.busy_since_cpu >= CPU_EVERY {
            self.busy_since_cpu = Duration::ZERO;
            self.read_cpu(Instant::now());
        }
    }

    /// Whether the tasks that start now are timed one by one.
    pub(crate) fn per_task(&self) -> bool {
        self.per_task
    }

    /// A task starts.
    #[inline(always)]
    pub(crate) fn starting(&mut self) {
        if self.per_task {
            self.start_timing();
        }
    }

    #[inline(never)]
    fn start_timing(&mut self) {
        if let Some(m) = &mut self.memory {
            // Resets the peak resident set to the current one (Linux 4.0+).
            let _ = m.clear_refs.write_all(b"5");
        }
        self.t0 = Instant::now();
    }

    /// The task that started last finished: what it used, if it is among the slowest.
    #[inline(always)]
    pub(crate) fn finished(&mut self) -> Option<Measured> {
        match self.per_task {
            true => self.timed_finished(),
            false => None,
        }
    }

    #[inline(never)]
    fn timed_finished(&mut self) -> Option<Measured> {
        let now = Instant::now();
        let time = now - self.t0;
        self.timed += 1;
        self.timed_sum += time;
        if self.timed == PROBE_FIRST && self.timed_sum / PROBE_FIRST < PER_TASK_FROM {
            // Short tasks: the rest of the batch is not timed one by one.
            self.per_task = false;
        }
        let cpu = (now - self.cpu_read >= CPU_EVERY).then(|| self.read_cpu(now));
        if self.slowest.len() == SLOWEST && time <= self.slowest[0] {
            return None;
        }
        self.rank(time);
        Some(Measured {
            time,
            cpu,
            peak_memory: self.memory.as_ref().and_then(|m| peak(&m.status)),
        })
    }

    /// Processor time used since it was last taken.
    pub(crate) fn take_cpu(&mut self) -> Duration {
        std::mem::take(&mut self.cpu_unreported)
    }

    #[cold]
    fn read_cpu(&mut self, now: Instant) -> Duration {
        let cpu = thread_cpu();
        let used = cpu.saturating_sub(self.cpu_at);
        self.cpu_at = cpu;
        self.cpu_read = now;
        self.cpu_unreported += used;
        used
    }

    #[cold]
    fn rank(&mut self, time: Duration) {
        if self.slowest.len() == SLOWEST {
            self.slowest.remove(0);
        }
        let at = self.slowest.partition_point(|&t| t < time);
        self.slowest.insert(at, time);
    }
}

/// The calling thread's processor time, user and system.
fn thread_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// `VmHWM` of `/proc/self/status`, in bytes.
fn peak(status: &File) -> Option<u64> {
    let mut buf = [0u8; 4096];
    let n = status.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_tasks_are_reported_and_no_others() {
        let mut p = Probe::new(false);
        let mut reported = 0;
        for _ in 0..PROBE_FIRST - 1 {
            p.starting();
            if p.finished().is_some() {
                reported += 1;
            }
        }
        // The first five are the slowest so far; then only those longer than the fifth.
        assert!(
            (SLOWEST..=PROBE_FIRST as usize - 1).contains(&reported),
            "{reported}"
        );
        p.starting();
        std::thread::sleep(Duration::from_millis(3));
        let slow = p.finished().expect("a long task is reported");
        assert!(slow.time >= Duration::from_millis(3));
        assert!(slow.cpu.is_some(), "read after a millisecond");
    }

    #[test]
    fn short_tasks_are_timed_one_by_one_only_in_a_sample_of_batches() {
        let mut p = Probe::new(false);
        let tiny = |p: &mut Probe| {
            p.starting();
            p.finished()
        };
        // The first batch: its first tasks are timed, then no more once they are known short.
        for _ in 0..PROBE_FIRST {
            tiny(&mut p);
        }
        assert!(!p.per_task);
        p.batch_done(Duration::from_micros(1), 1000);
        // Untimed batches of short tasks, but one in `SAMPLE_EVERY`.
        let mut timed = 0;
        for _ in 1..SAMPLE_EVERY * 3 {
            timed += usize::from(p.per_task);
            p.batch_done(Duration::from_micros(10), 100);
        }
        assert_eq!(timed, 2);
        // A batch of long tasks: the next batch is timed task by task.
        p.batch_done(Duration::from_millis(3), 2);
        assert!(p.per_task);
        p.starting();
        std::thread::sleep(Duration::from_millis(1));
        assert!(
            p.finished()
                .is_some_and(|m| m.time >= Duration::from_millis(1))
        );
    }

    #[test]
    fn peak_memory_is_read_when_asked() {
        let mut p = Probe::new(true);
        p.starting();
        let v = vec![1u8; 32 << 20];
        std::hint::black_box(&v);
        let m = p.finished().unwrap();
        assert!(m.peak_memory.unwrap() >= 32 << 20, "{m:?}");
    }
}
