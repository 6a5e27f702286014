//! Task deadlines as a worker publishes them: one 64-bit word, written when a task with a
//! timeout starts and cleared when its chunk ends, which the pool's watchdog reads (from a process
//! worker's journal, or from a thread worker's seat).
//!
//! ```text
//! [deadline: microseconds since the pool's epoch, 48 bits][generation: 16 bits]
//! ```
//!
//! `0` means no task with a deadline runs. The generation changes with every task, so that two
//! tasks whose deadlines fall on the same microsecond are still told apart: the pool kills a
//! worker only when, after the deadline, the word it reads is still the one it waited on, and it
//! blames the task only if the word is the same once the worker is dead (a task that finished
//! just before the kill is not blamed, and the one after it runs again).
//!
//! Both sides read `CLOCK_MONOTONIC`, which every process of the machine shares.

use std::time::Duration;

/// Microseconds of `CLOCK_MONOTONIC`.
pub(crate) fn now_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// A worker's side: makes the deadline words of the tasks it starts.
#[derive(Debug)]
pub(crate) struct Stamper {
    epoch_us: u64,
    generation: u16,
}

impl Stamper {
    /// Deadlines counted from `epoch_us` (the pool's, in `now_us` time).
    pub(crate) fn new(epoch_us: u64) -> Stamper {
        Stamper {
            epoch_us,
            generation: 0,
        }
    }

    /// The word of a task that starts now and may run for `timeout_us`.
    pub(crate) fn start(&mut self, timeout_us: u64) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        let at = now_us()
            .saturating_sub(self.epoch_us)
            .saturating_add(timeout_us);
        // Never 0: the generation is at least 1 in every word but one in 65536, whose deadline
        // part is then made at least 1.
        (at.min((1 << 48) - 1) << 16 | self.generation as u64).max(1 << 16)
    }
}

/// The deadline a word names, in `now_us` time.
pub(crate) fn deadline_us(word: u64, epoch_us: u64) -> u64 {
    epoch_us + (word >> 16)
}

/// How long until the deadline of `word`; zero once it passed.
pub(crate) fn remaining(word: u64, epoch_us: u64) -> Duration {
    Duration::from_micros(deadline_us(word, epoch_us).saturating_sub(now_us()))
}

/// A timeout as the wire carries it: whole microseconds, at least one; `0` for none.
pub(crate) fn timeout_us(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| (t.as_micros() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_never_zero_and_change_with_every_task() {
        let epoch = now_us();
        let mut s = Stamper::new(epoch);
        let a = s.start(1_000_000);
        let b = s.start(1_000_000);
        assert!(a != 0 && b != 0 && a != b);
        let left = remaining(a, epoch);
        assert!(
            left > Duration::from_millis(900) && left <= Duration::from_secs(1),
            "{left:?}"
        );
        // The generation wraps to 0 with a deadline of 0: still not 0.
        let mut late = Stamper::new(now_us() + 1_000_000);
        late.generation = u16::MAX;
        assert_ne!(late.start(0), 0);
        assert_eq!(timeout_us(Some(Duration::from_nanos(10))), 1);
        assert_eq!(timeout_us(None), 0);
    }
}
