//! The job queue and each worker's window: which job goes to which worker, and when. See
//! `README.md` in this folder.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::job::{CallLink, Job, Payload};
use crate::proto::{Body, Span};
use crate::worker::LocalChunk;

/// A worker may hold more than `depth` chunks while they add up to at most this many tasks...
pub(crate) const SMALL_WINDOW: usize = 64;
/// ...and at most this much work, by the call's measured task time.
const SMALL_WINDOW_WORK: Duration = Duration::from_micros(200);

/// A job on its way to a worker.
pub(crate) enum Outgoing {
    Local(LocalChunk),
    Remote {
        entry: i64,
        count: u32,
        /// Where the inputs are in the arena; the writer holds no reference to the block, so it
        /// is freed as soon as its job is.
        span: Option<Span>,
        /// Inputs that travel in the frame.
        inline: Option<Arc<Body>>,
    },
}

/// Jobs waiting for any worker, jobs waiting for one worker (`order_tasks`), and the jobs in
/// flight on each worker, oldest first.
pub(crate) struct Queue {
    global: VecDeque<Job>,
    targeted: Vec<VecDeque<Job>>,
    inflight: Vec<VecDeque<Job>>,
    next_id: u64,
    depth: usize,
}

impl Queue {
    pub(crate) fn new(workers: usize, depth: usize) -> Queue {
        Queue {
            global: VecDeque::new(),
            targeted: (0..workers).map(|_| VecDeque::new()).collect(),
            inflight: (0..workers).map(|_| VecDeque::new()).collect(),
            next_id: 0,
            depth,
        }
    }

    /// Queues `job` for any worker, or for worker `target` alone.
    pub(crate) fn push(&mut self, mut job: Job, target: Option<usize>) {
        self.next_id += 1;
        job.id = self.next_id;
        match target {
            Some(slot) => self.targeted[slot].push_back(job),
            None => self.global.push_back(job),
        }
    }

    /// Drops the queued jobs of `call`.
    pub(crate) fn remove_call(&mut self, call: &Arc<CallLink>) {
        self.global.retain(|j| !Arc::ptr_eq(&j.call, call));
        for q in &mut self.targeted {
            q.retain(|j| !Arc::ptr_eq(&j.call, call));
        }
    }

    /// The job worker `slot` runs now: the oldest in flight there.
    pub(crate) fn running(&self, slot: usize) -> Option<&Job> {
        self.inflight[slot].front()
    }

    /// Whether nothing is queued for `slot` and nothing is in flight there.
    pub(crate) fn drained(&self, slot: usize) -> bool {
        self.global.is_empty() && self.targeted[slot].is_empty() && self.inflight[slot].is_empty()
    }

    /// Moves the next job for `slot` in flight, if its window has room: a worker holds up to
    /// `depth` chunks, or more while they add up to at most [`SMALL_WINDOW`] tasks (so tiny chunks
    /// travel many to a write, and the worker never waits for the next one).
    pub(crate) fn take(&mut self, slot: usize) -> Option<(u64, Outgoing)> {
        loop {
            let from_targeted = !self.targeted[slot].is_empty();
            let next = if from_targeted {
                self.targeted[slot].front()
            } else {
                self.global.front()
            }?;
            if !next.call.is_cancelled() && self.inflight[slot].len() >= self.depth {
                // Beyond `depth` chunks only for tasks known to be tiny: at most SMALL_WINDOW
                // tasks and SMALL_WINDOW_WORK of work queued, so that a worker never hoards work
                // another one could be doing.
                let tasks: usize =
                    self.inflight[slot].iter().map(|j| j.len).sum::<usize>() + next.len;
                let ns = next.call.ns_per_task();
                if ns == 0
                    || tasks > SMALL_WINDOW
                    || tasks as u64 * ns > SMALL_WINDOW_WORK.as_nanos() as u64
                {
                    return None;
                }
            }
            let mut job = if from_targeted {
                self.targeted[slot].pop_front()
            } else {
                self.global.pop_front()
            }?;
            if job.call.is_cancelled() {
                continue;
            }
            let send = match &mut job.payload {
                Payload::Local(chunk) => Outgoing::Local(chunk.take()?),
                Payload::Remote { entry, count, body } => Outgoing::Remote {
                    entry: *entry,
                    count: *count,
                    span: body.span(),
                    inline: body.span().is_none().then(|| body.clone()),
                },
            };
            let id = job.id;
            self.inflight[slot].push_back(job);
            return Some((id, send));
        }
    }

    /// Takes job `id` out of `slot`'s flight, if it is the oldest there.
    pub(crate) fn land(&mut self, slot: usize, id: u64) -> Option<Job> {
        match self.inflight[slot].front() {
            Some(j) if j.id == id => self.inflight[slot].pop_front(),
            _ => None,
        }
    }

    /// After worker `slot` ended: the job it was running, and the others in flight there put
    /// back at the front of the queue (process jobs, which kept their inputs) or handed back to
    /// be failed (thread jobs, whose inputs are gone).
    pub(crate) fn unwind(&mut self, slot: usize) -> (Option<Job>, Vec<Job>) {
        let mut jobs = std::mem::take(&mut self.inflight[slot]);
        let first = jobs.pop_front();
        let mut lost = Vec::new();
        while let Some(job) = jobs.pop_back() {
            match job.payload {
                Payload::Remote { .. } => self.global.push_front(job),
                Payload::Local(_) => lost.push(job),
            }
        }
        (first, lost)
    }

    /// Every queued job, with the worker it waited for.
    pub(crate) fn drain_queued(&mut self) -> Vec<(Option<usize>, Job)> {
        let mut jobs: Vec<(Option<usize>, Job)> =
            self.global.drain(..).map(|j| (None, j)).collect();
        for (slot, q) in self.targeted.iter_mut().enumerate() {
            jobs.extend(q.drain(..).map(|j| (Some(slot), j)));
        }
        jobs
    }

    /// Every queued and in-flight job, with the worker it waited for or ran on.
    pub(crate) fn drain_all(&mut self) -> Vec<(Option<usize>, Job)> {
        let mut jobs = self.drain_queued();
        for (slot, q) in self.inflight.iter_mut().enumerate() {
            jobs.extend(q.drain(..).map(|j| (Some(slot), j)));
        }
        jobs
    }

    /// Chunks waiting in the queue, and chunks in flight on workers.
    pub(crate) fn load(&self) -> (usize, usize) {
        let queued = self.global.len() + self.targeted.iter().map(VecDeque::len).sum::<usize>();
        (queued, self.inflight.iter().map(VecDeque::len).sum())
    }
}
