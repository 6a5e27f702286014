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
    /// A thread worker's job, with its id.
    Local(u64, LocalChunk),
    Remote {
        id: u64,
        /// Its number on the worker.
        seq: u8,
        entry: i64,
        count: u32,
        /// Where the inputs are in the arena; the writer holds no reference to the block, so it
        /// is freed as soon as its job is.
        span: Option<Span>,
        /// Inputs that travel in the frame: the body, from this byte on.
        inline: Option<(Arc<Body>, usize)>,
    },
}

/// Jobs waiting for any worker, jobs waiting for one worker (`order_tasks`), and the jobs in
/// flight on each worker, oldest first.
pub(crate) struct Queue {
    global: VecDeque<Job>,
    targeted: Vec<VecDeque<Job>>,
    inflight: Vec<VecDeque<Job>>,
    /// Per worker: the number of the last job sent to it.
    sent: Vec<u8>,
    next_id: u64,
    depth: usize,
}

impl Queue {
    pub(crate) fn new(workers: usize, depth: usize) -> Queue {
        Queue {
            global: VecDeque::new(),
            targeted: (0..workers).map(|_| VecDeque::new()).collect(),
            inflight: (0..workers).map(|_| VecDeque::new()).collect(),
            sent: vec![0; workers],
            next_id: 0,
            depth,
        }
    }

    /// Queues `job` for any worker, or for worker `target` alone.
    pub(crate) fn push(&mut self, mut job: Job, target: Option<usize>) {
        self.next_id += 1;
        job.id = self.next_id;
        job.target = target;
        match target {
            Some(slot) => self.targeted[slot].push_back(job),
            None => self.global.push_back(job),
        }
    }

    /// Puts `jobs` back at the front of the queue, in their order, each where it waited before.
    pub(crate) fn requeue(&mut self, jobs: Vec<Job>) {
        for mut job in jobs.into_iter().rev() {
            if job.id == 0 {
                self.next_id += 1;
                job.id = self.next_id;
            }
            match job.target {
                Some(slot) => self.targeted[slot].push_front(job),
                None => self.global.push_front(job),
            }
        }
    }

    /// A new worker in `slot`: its jobs are numbered afresh.
    pub(crate) fn connected(&mut self, slot: usize) {
        self.sent[slot] = 0;
    }

    /// Drops the queued jobs of `call`.
    pub(crate) fn remove_call(&mut self, call: &Arc<CallLink>) {
        self.global.retain(|j| !Arc::ptr_eq(&j.call, call));
        for q in &mut self.targeted {
            q.retain(|j| !Arc::ptr_eq(&j.call, call));
        }
    }

    /// The job worker `slot` runs now, or runs next: the oldest in flight there.
    pub(crate) fn running(&self, slot: usize) -> Option<&Job> {
        self.inflight[slot].front()
    }

    /// The job worker `slot` runs now, if its id is `id`.
    pub(crate) fn running_mut(&mut self, slot: usize, id: u64) -> Option<&mut Job> {
        self.inflight[slot].front_mut().filter(|j| j.id == id)
    }

    /// Whether nothing is queued for `slot` and nothing is in flight there.
    pub(crate) fn drained(&self, slot: usize) -> bool {
        self.global.is_empty() && self.targeted[slot].is_empty() && self.inflight[slot].is_empty()
    }

    /// Moves the next job for `slot` in flight, if its window has room: a worker holds up to
    /// `depth` chunks, or more while they add up to at most [`SMALL_WINDOW`] tasks (so tiny chunks
    /// travel many to a write, and the worker never waits for the next one).
    pub(crate) fn take(&mut self, slot: usize) -> Option<Outgoing> {
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
                Payload::Local(chunk) => Outgoing::Local(job.id, chunk.take()?),
                Payload::Remote { entry, body, skip } => {
                    self.sent[slot] = self.sent[slot].wrapping_add(1);
                    job.on_worker = self.sent[slot];
                    Outgoing::Remote {
                        id: job.id,
                        seq: job.on_worker,
                        entry: *entry,
                        count: job.len as u32,
                        span: body.span(*skip),
                        inline: body.span(*skip).is_none().then(|| (body.clone(), *skip)),
                    }
                }
            };
            self.inflight[slot].push_back(job);
            return Some(send);
        }
    }

    /// Takes job `id` out of `slot`'s flight, if it is the oldest there.
    pub(crate) fn land(&mut self, slot: usize, id: u64) -> Option<Job> {
        match self.inflight[slot].front() {
            Some(j) if j.id == id => self.inflight[slot].pop_front(),
            _ => None,
        }
    }

    /// Every job in flight on `slot`, oldest first (its worker ended).
    pub(crate) fn unwind(&mut self, slot: usize) -> VecDeque<Job> {
        std::mem::take(&mut self.inflight[slot])
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
