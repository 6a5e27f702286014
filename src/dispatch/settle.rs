//! Settling a process worker that ended in the middle of its work (it died, was killed, timed
//! out, broke the protocol or retired): what its journal says had finished is delivered, the task
//! it was running is blamed (or runs again), and the rest goes back to the queue. See "When a
//! process worker ends" in `README.md`.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use super::Core;
use super::job::{CallLink, Job, Outcome};
use crate::error::{Error, Stage};
use crate::sys::journal::Journal;

/// Who a worker's end is blamed on, by `settle`.
pub(super) enum Cause {
    /// The task it was running, with this error (its death, a broken protocol, a cancellation).
    Task(Error),
    /// The task it was running, which ran past its deadline (`now_us` time) and was killed.
    TimedOut { deadline_us: u64 },
    /// Nobody: it was killed for a task that had finished meanwhile; the one it ran runs again.
    Innocent,
}

impl Core {
    /// After process worker `slot` ended (it died, was killed, or broke the protocol): what its
    /// journal says had finished is delivered, the task it was running fails as `cause` says
    /// (or, when its worker died and `max_retries` allows, runs again), and the rest of its jobs
    /// go back to the front of the queue. A worker that broke the protocol is not `trusted`: its
    /// journal is not read, and the first task whose result did not arrive takes the blame.
    pub(super) fn settle(
        &self,
        slot: usize,
        journal: Option<&Journal>,
        cause: Cause,
        trusted: bool,
    ) {
        let mut jobs = self.state().queue.unwind(slot);
        let mut later = Vec::new();
        // What finished that the pool had not heard of: the batches the worker ended (their
        // frames may not have been flushed), then the one it was writing.
        if let (Some(j), true) = (journal, trusted) {
            let snap = j.snapshot();
            for r in &snap.ended {
                if let Some(bytes) = j.recorded(r) {
                    recover(&mut jobs, &mut later, (r.job, r.first, r.values), bytes);
                }
            }
            if let Some((id, first, start, done)) = snap.batch {
                recover(
                    &mut jobs,
                    &mut later,
                    (id, first, done),
                    j.after_death(start),
                );
            }
        }
        // The job it was running is the last it claimed (it claims each before it starts it,
        // and runs them in order); without a journal, or untrusted, the oldest unfinished one.
        let claimed = journal.filter(|_| trusted).map(Journal::claimed);
        let ran = |job: &Job| match claimed {
            Some(c) => c.wrapping_sub(job.on_worker) < 128,
            None => true,
        };
        let mut again = Vec::new();
        let mut lost = Vec::new();
        let mut blamed = matches!(cause, Cause::Innocent);
        for mut job in jobs {
            if job.delivered == job.len {
                continue;
            }
            let from = job.delivered;
            if blamed || !ran(&job) {
                match remainder(job, from) {
                    Ok(job) => again.push(job),
                    Err(job) => lost.push(*job),
                }
                continue;
            }
            blamed = true;
            let e = match &cause {
                Cause::Task(e) => e.clone(),
                Cause::TimedOut { deadline_us } => {
                    let limit = job.call.timeout().unwrap_or_default();
                    let late = crate::proto::deadline::now_us().saturating_sub(*deadline_us);
                    let elapsed = limit + Duration::from_micros(late);
                    Error::timeout(Stage::Task, limit, Some(elapsed))
                }
                Cause::Innocent => unreachable!("nobody is blamed"),
            };
            // The deaths this very task caused before, when it runs again after one.
            let earlier = match from {
                0 => job.deaths.take().map(|d| *d).unwrap_or_default(),
                _ => Vec::new(),
            };
            if let Some(exit) = e.death() {
                if earlier.len() < self.settings.max_retries as usize && !job.call.is_cancelled() {
                    match remainder(job, from) {
                        Ok(mut rest) => {
                            self.observer
                                .counters
                                .retried
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let mut deaths = earlier;
                            deaths.push((slot, exit));
                            rest.deaths = Some(Box::new(deaths));
                            again.push(rest);
                        }
                        Err(job) => lost.push(*job),
                    }
                    continue;
                }
            }
            let found = locate(&job, from);
            let mut e = e
                .after_deaths(&earlier)
                .with_worker(slot)
                .with_task(job.first + from);
            if let Some((input, _)) = &found {
                e = e.with_input(input.clone());
            }
            later.push(Later::Failed(job.call.clone(), job.first + from, e));
            job.delivered += 1;
            if job.delivered < job.len {
                match found.and_then(|(_, next)| job.rest(from + 1, next)) {
                    Some(rest) => again.push(rest),
                    None => lost.push(job),
                }
            }
        }
        again.retain(|j| !j.call.is_cancelled());
        self.state().queue.requeue(again);
        for job in lost {
            fail_lost(job, slot);
        }
        for l in later {
            match l {
                Later::Values(call, first, count, bytes) => {
                    deliver_values(&call, first, count, bytes, slot, Duration::ZERO)
                }
                Later::Failed(call, index, e) => call.deliver_failure(index, 1, Some(slot), e),
            }
        }
        self.wake(None, false);
    }
}

/// Input `index` of `job`'s inputs: its `Debug`, and where the next one starts. A user's
/// `Deserialize` runs here: a panic in it means the input is not found.
fn locate(job: &Job, index: usize) -> Option<(String, usize)> {
    let inputs = job.inputs()?;
    catch_unwind(AssertUnwindSafe(|| (job.call.locate)(inputs, index)))
        .ok()
        .flatten()
}

/// What is left of `job` from task `from` on, to run again; the job back when its inputs there
/// cannot be found.
fn remainder(job: Job, from: usize) -> Result<Job, Box<Job>> {
    if from == 0 {
        return Ok(job);
    }
    match locate(&job, from - 1).and_then(|(_, next)| job.rest(from, next)) {
        Some(rest) => Ok(rest),
        None => Err(Box::new(job)),
    }
}

/// Fails what is left of a job whose inputs cannot be sent again.
fn fail_lost(job: Job, slot: usize) {
    let lost = Error::codec(
        "could not send a task again",
        "the inputs of its chunk no longer decode",
    );
    super::job::fail(job, Some(slot), lost);
}

/// Delivers `values` results of tasks `first..` of job `id`, which a dead worker left in its
/// journal, if they are the next the job is waiting for.
fn recover<'a>(
    jobs: &mut VecDeque<Job>,
    later: &mut Vec<Later<'a>>,
    (id, first, values): (u64, u32, u32),
    bytes: &'a [u8],
) {
    let Some(job) = jobs.iter_mut().find(|j| j.id == id) else {
        return;
    };
    let values = values as usize;
    if first as usize != job.delivered || values == 0 || job.len - job.delivered < values {
        return;
    }
    later.push(Later::Values(
        job.call.clone(),
        job.first + job.delivered,
        values,
        bytes,
    ));
    job.delivered += values;
}

/// What `settle` delivers once the dead worker's jobs are dropped or queued again: a caller
/// that sees its last result finds the arena blocks of those jobs free.
enum Later<'a> {
    /// Results a dead worker left in its journal: the call, the index of the first, how many,
    /// and their bytes.
    Values(Arc<CallLink>, usize, usize, &'a [u8]),
    /// The failure of one task.
    Failed(Arc<CallLink>, usize, Error),
}

/// Decodes `count` results of tasks `first..` (indices in the call) from `bytes`, with the
/// decoder of the call, and delivers them; tasks whose result does not decode fail. A
/// cancelled call's results are not decoded at all.
pub(super) fn deliver_values(
    call: &CallLink,
    first: usize,
    count: usize,
    bytes: &[u8],
    slot: usize,
    busy: Duration,
) {
    if call.is_cancelled() {
        return;
    }
    let decode = call.decode;
    // A user's `Deserialize` runs here, in the pool's task: a panic in it is that task's error.
    match catch_unwind(AssertUnwindSafe(|| decode(bytes, count))) {
        Ok((out, decoded, error)) => {
            if decoded > 0 {
                call.deliver(first, decoded, Some(slot), 0, || Outcome::Local(out), busy);
            }
            if let Some(e) = error {
                let e = Error::codec("could not deserialise a result", e).with_worker(slot);
                call.deliver_failure(first + decoded, count - decoded, Some(slot), e);
            }
        }
        Err(_) => {
            let e = Error::codec("could not deserialise a result", "its Deserialize panicked")
                .with_worker(slot);
            call.deliver_failure(first, count, Some(slot), e);
        }
    }
}
