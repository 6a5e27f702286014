//! Deadlines: the watchdog of each worker, which sleeps until the deadline of the task it runs,
//! and what happens to a thread worker whose task runs past it. See "Deadlines" in `README.md`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Core;
use super::job::{Job, Outcome, Payload};
use crate::error::{Error, Stage};
use crate::worker::{Salvaged, Takeback, Watch};

impl Core {
    /// Resolves with the deadline word of a task that ran past its deadline on worker `slot`;
    /// `deadline` reads the worker's word and the epoch it counts from. A word read after its
    /// deadline names a task that was still running then. It wakes at the deadline of the task
    /// that runs, and no later than the shortest timeout of the jobs in flight there (one not
    /// started yet cannot expire sooner). While it sleeps, a job sent there wakes it only if
    /// its timeout is shorter than the sleep ([`Core::timed_sent`]): a steady stream of jobs
    /// with timeouts costs no wake-ups.
    pub(super) async fn expired(&self, slot: usize, deadline: impl Fn() -> (u64, u64)) -> u64 {
        use crate::proto::deadline::{deadline_us, now_us, remaining};
        let (sent, wake_below) = &self.timed[slot];
        loop {
            let woken = sent.notified();
            let (word, epoch) = deadline();
            if word != 0 && now_us() >= deadline_us(word, epoch) {
                return word;
            }
            let running = (word != 0).then(|| remaining(word, epoch));
            let waiting = self.state().queue.shortest_timeout(slot);
            let wait = running.into_iter().chain(waiting).min();
            let below = wait.map_or(u64::MAX, |w| w.as_micros().min(u64::MAX as u128) as u64);
            wake_below.store(below, Ordering::SeqCst);
            // A job sent between the look above and the store is seen here.
            let again = self.state().queue.shortest_timeout(slot);
            if again.is_some_and(|t| wait.is_none_or(|w| t < w)) {
                continue;
            }
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// A job whose tasks may run for `timeout_us` was sent to worker `slot`: its watchdog
    /// looks again if it sleeps longer than that.
    pub(super) fn timed_sent(&self, slot: usize, timeout_us: u64) {
        let (sent, wake_below) = &self.timed[slot];
        if timeout_us < wake_below.load(Ordering::SeqCst) {
            wake_below.store(0, Ordering::SeqCst);
            sent.notify_one();
        }
    }

    /// Thread worker `slot`'s task whose deadline word is `word` ran past its deadline: the
    /// thread is abandoned (it sees `is_cancelled`, and leaves once its task returns), the
    /// task fails, the results its chunk finished are delivered and the inputs it did not start
    /// go back to the front of the queue. `false` if the task finished meanwhile.
    pub(super) fn abandon(&self, slot: usize, watch: &Watch, word: u64) -> bool {
        let (job, salvaged) = {
            let mut st = self.state();
            let Some(mut salvaged) = st.queue.running(slot).and_then(|job| match &job.payload {
                Payload::Local {
                    takeback: Takeback::Chunk(s),
                    ..
                } => s.salvage(word),
                Payload::Local {
                    takeback: Takeback::Task,
                    ..
                } => watch.take_task(word).then(|| Salvaged {
                    out: Box::new(()),
                    finished: 0,
                    failed: 0,
                    rest: None,
                }),
                _ => None,
            }) else {
                return false;
            };
            watch.abandon(&self.abandoned);
            let mut jobs = st.queue.unwind(slot);
            st.watches[slot] = None;
            let job = jobs.pop_front().expect("the job it ran");
            // A thread holds one job at a time; anything else goes back as it was.
            let mut again: Vec<Job> = jobs.into_iter().collect();
            if let Some(rest) = salvaged.rest.take() {
                again.insert(0, job.local_rest(salvaged.finished + 1, rest));
            }
            st.queue.requeue(again);
            (job, salvaged)
        };
        self.wake(None, false);
        let Salvaged {
            out,
            finished,
            failed,
            ..
        } = salvaged;
        let (call, first) = (job.call.clone(), job.first);
        let limit = call.timeout().unwrap_or_default();
        let (_, epoch) = watch.deadline();
        let late = crate::proto::deadline::now_us()
            .saturating_sub(crate::proto::deadline::deadline_us(word, epoch));
        drop(job);
        if finished > 0 {
            call.deliver(
                first,
                finished,
                Some(slot),
                failed,
                || Outcome::Local(out),
                Duration::ZERO,
            );
        }
        let e = Error::timeout(
            Stage::Task,
            limit,
            Some(limit + Duration::from_micros(late)),
        )
        .with_worker(slot)
        .with_task(first + finished);
        call.deliver_failure(first + finished, 1, Some(slot), e);
        true
    }
}
