//! How thread workers wait for jobs and are woken: see "Thread workers" in `README.md`.
//!
//! A thread worker takes its jobs from the queue itself, under the pool's state lock. When there
//! is none it first watches a generation counter for a short while (work often comes back within
//! a wake-up's time), then registers as a sleeper and blocks on a condition variable. A submit
//! bumps the counter always, and notifies the condition variable only when a sleeper is
//! registered (std's `notify_all` always makes a system call).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::job::{CallLink, Outcome};
use super::queue::Outgoing;
use super::{Core, State};
use crate::error::{Error, Kind, Stage};
use crate::observe::stats::Cause as RestartCause;
use crate::observe::{progress, registry};
use crate::proto::Failure;
use crate::worker::{Exited, LocalChunk, LocalDone, LocalNext, LocalQueue, Spent, Watch};

/// How long an idle thread worker watches for work before it blocks.
const SPIN: Duration = Duration::from_micros(100);

/// The thread workers' sleep protocol.
#[derive(Default)]
pub(crate) struct Sleep {
    /// Thread workers wait here for jobs (with the state lock)...
    cv: Condvar,
    /// ...after spinning briefly on this, which changes whenever they are woken.
    generation: AtomicU64,
    /// How many thread workers wait on `cv`; changed only under the state lock.
    sleepers: AtomicUsize,
}

impl Sleep {
    /// Tells thread workers to look at the queue again: those spinning always, those blocked
    /// when `blocked` (a change that did not go through [`Sleep::queued`]'s lock discipline must
    /// wake them all).
    pub(crate) fn wake(&self, blocked: bool) {
        self.generation.fetch_add(1, Ordering::Release);
        if blocked {
            self.cv.notify_all();
        }
    }

    /// After a job was queued under the state lock. A thread worker registers as a sleeper under
    /// that lock, before it waits: if it did so before our push, we see it; if after, it saw the
    /// job. Only then is the condition variable worth a system call.
    pub(crate) fn queued(&self) {
        self.wake(self.sleepers.load(Ordering::SeqCst) > 0);
    }

    /// Waits for a wake-up: spins first when `spin`, then blocks. Returns the guard again.
    fn park<'a>(
        &self,
        core: &'a Core,
        st: MutexGuard<'a, State>,
        spin: bool,
    ) -> MutexGuard<'a, State> {
        if spin {
            // Work often comes back within a wake-up's time (about 30 µs across cores on a VM):
            // watch for it briefly before blocking, so the submitter need not wake us.
            let seen = self.generation.load(Ordering::Acquire);
            drop(st);
            let until = Instant::now() + SPIN;
            while self.generation.load(Ordering::Acquire) == seen && Instant::now() < until {
                std::thread::yield_now();
            }
            return core.state();
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        st
    }
}

impl LocalQueue for Core {
    fn next(&self, slot: usize, watch: &Watch) -> LocalNext {
        let sleep = self.sleep();
        let mut st = self.state();
        let mut spin = true;
        loop {
            if self.is_stopped() || watch.is_abandoned() {
                return LocalNext::Stop;
            }
            let current = st.watches[slot]
                .as_ref()
                .is_some_and(|w| std::ptr::eq(&**w, watch));
            if !current {
                // A successor started ahead of time waits for its slot.
            } else if let Some(job) = st.queue.take(slot) {
                self.sent(slot, st.queue.tasks_sent(slot));
                let call = st.queue.last_sent(slot).map(|j| &j.call);
                if let Some((id, chunk)) = self.started(slot, watch, job, call) {
                    return LocalNext::Job(id, chunk);
                }
            } else if st.closing && st.queue.drained(slot) {
                // Its driver watches the exit function's deadline from now.
                watch.exiting.notify_one();
                self.exit_starts(slot);
                return LocalNext::Shutdown;
            }
            st = sleep.park(self, st, spin);
            spin = !spin;
        }
    }

    fn done(
        &self,
        slot: usize,
        watch: &Watch,
        id: u64,
        done: LocalDone,
        Spent { busy, cpu }: Spent,
        more: bool,
    ) -> Option<(u64, LocalChunk)> {
        let LocalDone {
            out,
            ran,
            failed,
            slow,
            rest,
            abandoned,
        } = done;
        let (job, next) = {
            let mut st = self.state();
            // The pool took an abandoned thread's job over; it hands nothing over and leaves.
            if abandoned || watch.is_abandoned() {
                return None;
            }
            let mut job = st.queue.land(slot, id);
            if let Some(job) = &mut job {
                job.worked(busy);
            }
            if let (Some(job), Some(rest)) = (&job, rest) {
                // The worker's budget ran out: what it did not run goes back to the front.
                st.queue.requeue(vec![job.local_rest(ran, rest)]);
            }
            let next = match self.is_stopped() || !more {
                true => None,
                false => st.queue.take(slot),
            };
            if next.is_some() {
                self.sent(slot, st.queue.tasks_sent(slot));
            }
            let call = st.queue.last_sent(slot).map(|j| &j.call);
            (
                job,
                next.and_then(|job| self.started(slot, watch, job, call)),
            )
        };
        // Counted before the results are delivered: a caller that has them sees the work.
        self.worked(slot, ran, busy, cpu);
        if let Some(job) = job {
            self.landed(&job);
            let out = match out {
                Ok(out) => out,
                // The chunk could not run at all: every task of it fails.
                Err(m) => {
                    super::job::fail(job, Some(slot), Error::new(Kind::Protocol(m)));
                    return next;
                }
            };
            let (call, first) = (job.call.clone(), job.first);
            drop(job);
            if let Some(insights) = &self.observer.insights {
                for (i, m) in slow {
                    insights.slow(crate::observe::SlowTask {
                        duration: m.time,
                        worker: slot,
                        index: first + i as usize,
                        input: None,
                        cpu: m.cpu,
                        peak_memory: None,
                    });
                }
            }
            call.deliver(first, ran, Some(slot), failed, || Outcome::Local(out), busy);
        }
        next
    }

    fn retire(&self, slot: usize, watch: &Watch) {
        let mut st = self.state();
        watch.retired.store(true, Ordering::Release);
        if st.watches[slot]
            .as_ref()
            .is_some_and(|w| std::ptr::eq(&**w, watch))
        {
            st.watches[slot] = None;
            st.queue.disconnected(slot);
            drop(st);
            self.ended(slot, RestartCause::Lifespan, "retired: its lifespan".into());
            self.exit_starts(slot);
        }
    }

    fn left(&self, slot: usize, watch: &Watch, exit: Result<Exited, Failure>) {
        if watch.is_abandoned() {
            return;
        }
        match watch.retired.load(Ordering::Acquire) {
            true => self.store_retired(
                slot,
                exit.map_err(|f| Error::failed(f, Stage::Exit).with_worker(slot)),
            ),
            false => drop(self.store_exit(slot, exit)),
        }
    }

    fn abandoned_left(&self, watch: &Watch) {
        if watch.counted.load(Ordering::Acquire) {
            self.abandoned.fetch_sub(1, Ordering::AcqRel);
            self.thread_room.notify_waiters();
        }
    }
}

impl Core {
    /// Thread worker `slot` takes `job` (under the state lock): its task is not cancelled, and
    /// a job whose tasks have deadlines wakes the slot's watchdog.
    /// `call` is the job's call.
    fn started(
        &self,
        slot: usize,
        watch: &Watch,
        job: Outgoing,
        call: Option<&Arc<CallLink>>,
    ) -> Option<(u64, LocalChunk)> {
        let Outgoing::Local { id, chunk, timed } = job else {
            return None;
        };
        watch.cancelled.store(false, Ordering::Relaxed);
        // A pool a task of this job builds nests under this pool and call.
        registry::set_worker(self.observer.id, slot);
        progress::running_on_this_thread(call, || call.map(|c| c.progress.clone()));
        if let Some(t) = timed {
            self.timed_sent(slot, t);
        }
        Some((id, chunk))
    }
}
