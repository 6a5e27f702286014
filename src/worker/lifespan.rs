//! When a worker retires: after `worker_lifespan` tasks, or after a task that left its resident
//! memory above `worker_max_memory`.
//!
//! The count is exact: a worker stops after its last allowed task even in the middle of a chunk,
//! and hands the rest back. Resident memory is read from `/proc/self/statm` after a task, at most
//! once a millisecond (a read costs a few microseconds, more than a tiny task).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use crate::proto::deadline::coarse_us;

/// How often resident memory is read, at most.
const CHECK_EVERY: Duration = Duration::from_millis(1);

/// What is left of a worker's life.
#[derive(Debug)]
pub(crate) struct Lifespan {
    /// Tasks it may still run (`u64::MAX`: no limit).
    left: u64,
    memory: Option<Memory>,
    over: bool,
    /// It is over for its memory, not its count.
    for_memory: bool,
}

#[derive(Debug)]
struct Memory {
    max: u64,
    statm: File,
    page: u64,
    /// When to read it next (`coarse_us`: a few nanoseconds a task, not a clock call).
    next: u64,
}

impl Lifespan {
    /// A worker that may run `tasks` tasks and keep `max_memory` bytes resident.
    pub(crate) fn new(tasks: Option<u64>, max_memory: Option<u64>) -> Lifespan {
        let memory = max_memory.and_then(|max| {
            Some(Memory {
                max,
                statm: File::open("/proc/self/statm").ok()?,
                page: nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                    .ok()
                    .flatten()
                    .map_or(4096, |p| p as u64),
                next: 0,
            })
        });
        Lifespan {
            left: tasks.unwrap_or(u64::MAX),
            memory,
            over: false,
            for_memory: false,
        }
    }

    /// A task finished: `false` when the worker must run no other.
    #[inline]
    pub(crate) fn task_done(&mut self) -> bool {
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            self.over = true;
        } else if self.memory.is_some() {
            self.check_memory();
        }
        !self.over
    }

    /// Whether the worker must retire.
    pub(crate) fn is_over(&self) -> bool {
        self.over
    }

    /// Whether it retires for its memory (not its count).
    pub(crate) fn for_memory(&self) -> bool {
        self.for_memory
    }

    #[cold]
    fn check_memory(&mut self) {
        let Some(m) = &mut self.memory else {
            return;
        };
        let now = coarse_us();
        if now < m.next {
            return;
        }
        m.next = now + CHECK_EVERY.as_micros() as u64;
        if resident(&m.statm).is_some_and(|pages| pages * m.page > m.max) {
            self.over = true;
            self.for_memory = true;
        }
    }
}

/// Resident pages, the second field of `/proc/self/statm`.
fn resident(statm: &File) -> Option<u64> {
    let mut buf = [0u8; 128];
    let n = statm.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifespan_counts_tasks_exactly() {
        let mut l = Lifespan::new(Some(3), None);
        assert!(l.task_done() && l.task_done());
        assert!(!l.task_done());
        assert!(l.is_over());
        let mut forever = Lifespan::new(None, None);
        assert!((0..1000).all(|_| forever.task_done()));
    }

    #[test]
    fn memory_past_the_limit_ends_it() {
        let statm = File::open("/proc/self/statm").unwrap();
        assert!(resident(&statm).unwrap() > 0);
        let mut l = Lifespan::new(None, Some(1));
        assert!(!l.task_done(), "a process takes more than one byte");
        let mut roomy = Lifespan::new(None, Some(u64::MAX));
        assert!(roomy.task_done());
    }
}
