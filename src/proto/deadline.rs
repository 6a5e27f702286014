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
//! Both sides read `CLOCK_MONOTONIC` (the worker its coarse variant: see [`Stamper`]), which
//! every process of the machine shares.

use std::time::Duration;

/// Microseconds of `CLOCK_MONOTONIC`.
pub(crate) fn now_us() -> u64 {
    read_us(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// Microseconds of `CLOCK_MONOTONIC_COARSE`: `now_us` as of the last timer tick (1 to 4 ms),
/// for a few nanoseconds.
pub(crate) fn coarse_us() -> u64 {
    read_us(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
}

fn read_us(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// A worker's side: makes the deadline words of the tasks it starts.
///
/// A task's start is read from `CLOCK_MONOTONIC_COARSE`, the same clock as `now_us` as of the
/// last timer tick, which costs a few nanoseconds where the precise clock costs tens: it is read
/// once per task. Its resolution (a tick, 1 to 4 ms) is added to every deadline, so that a task is
/// never stopped early; it may be stopped up to a tick late.
#[derive(Debug)]
pub(crate) struct Stamper {
    epoch_us: u64,
    generation: u16,
    /// The coarse clock's resolution, in microseconds.
    tick_us: u64,
}

impl Stamper {
    /// Deadlines counted from `epoch_us` (the pool's, in `now_us` time).
    pub(crate) fn new(epoch_us: u64) -> Stamper {
        let tick_us = nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
            .map_or(10_000, |t| {
                (t.tv_sec() as u64 * 1_000_000 + (t.tv_nsec() as u64).div_ceil(1_000)).max(1)
            });
        Stamper {
            epoch_us,
            generation: 0,
            tick_us,
        }
    }

    /// The word of a task that starts now and may run for `timeout_us`.
    pub(crate) fn start(&mut self, timeout_us: u64) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        let now = coarse_us();
        let at = now
            .saturating_sub(self.epoch_us)
            .saturating_add(self.tick_us)
            .saturating_add(timeout_us);
        // Never 0 (the generation is at least 1 in every word but one in 65536, whose deadline
        // part is then made at least 1) and never `u64::MAX` (which a one-task chunk uses for
        // "abandoned"): the deadline part is at most 2^48 - 2.
        (at.min((1 << 48) - 2) << 16 | self.generation as u64).max(1 << 16)
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
    timeout.map_or(0, |t| t.as_micros().clamp(1, u64::MAX as u128) as u64)
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
        let tick = Duration::from_micros(s.tick_us);
        assert!(tick <= Duration::from_millis(10), "{tick:?}");
        assert!(
            left > Duration::from_millis(900) && left <= Duration::from_secs(1) + tick,
            "{left:?}"
        );
        // The generation wraps to 0 with a deadline of 0: still not 0.
        let mut late = Stamper::new(now_us() + 1_000_000);
        late.generation = u16::MAX;
        assert_ne!(late.start(0), 0);
        assert_eq!(timeout_us(Some(Duration::from_nanos(10))), 1);
        assert_eq!(timeout_us(None), 0);
        assert_eq!(timeout_us(Some(Duration::MAX)), u64::MAX);
        // A deadline past what the word holds is as good as none.
        let far = Stamper::new(now_us()).start(u64::MAX);
        assert!(far != 0 && far != u64::MAX);
    }
}
