//! The job queue and each worker's window: which job goes to which worker, and when. See
//! `README.md` in this folder.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use super::job::{CallLink, Job, Payload};
use crate::observe::meters::QueueDepth;
use crate::proto::{Body, Span};
use crate::sys::journal::{Journal, MAX_QUEUED};
use crate::worker::LocalChunk;

/// A worker may hold more than `depth` chunks while they add up to at most this many tasks...
pub(crate) const SMALL_WINDOW: usize = 64;
/// ...and at most this much work, by the call's measured task time.
const SMALL_WINDOW_WORK: Duration = Duration::from_micros(200);

/// A job on its way to a worker.
pub(crate) enum Outgoing {
    /// A thread worker's job.
    Local {
        id: u64,
        chunk: LocalChunk,
        /// How long its tasks may run (microseconds), if they have deadlines.
        timed: Option<u64>,
    },
    Remote {
        id: u64,
        /// Its number on the worker.
        seq: u8,
        /// Its tasks are known to be tiny: the worker may hold their results a little, to send
        /// them with others.
        hold: bool,
        entry: i64,
        count: u32,
        /// Where the inputs are in the arena; the writer holds no reference to the block, so it
        /// is freed as soon as its job is.
        span: Option<Span>,
        /// Inputs that travel in the frame: the body, from this byte on.
        inline: Option<(Arc<Body>, usize)>,
        /// How long each task may run (microseconds, 0: no limit).
        timeout_us: u64,
    },
}

/// What the queue needs to know of a process worker's journal: which jobs it has claimed, and
/// how to take back those it has not (see `sys::journal`). A trait so that the policy can be
/// tested against a fake worker.
pub(crate) trait Claims: Send + Sync {
    /// The number of the last job the worker claimed.
    fn claimed(&self) -> u8;
    /// Takes back the jobs after `last_claimed` up to `upto`, unless the worker claimed another
    /// meanwhile.
    fn revoke(&self, last_claimed: u8, upto: u8) -> bool;
}

impl Claims for Journal {
    fn claimed(&self) -> u8 {
        Journal::claimed(self)
    }
    fn revoke(&self, last_claimed: u8, upto: u8) -> bool {
        Journal::revoke(self, last_claimed, upto)
    }
}

/// A worker as the queue sees it.
#[derive(Default)]
struct Seat {
    /// A worker runs in this slot.
    live: bool,
    /// Its journal, for a process worker that has one.
    claims: Option<Arc<dyn Claims>>,
    /// The number of the last job sent to it.
    sent: u8,
    /// How many tasks it was sent (less those taken back): with a lifespan, a worker is sent no
    /// job once it has been sent its last task.
    tasks: u64,
}

/// Jobs waiting for any worker, jobs waiting for one worker (`order_tasks`), and the jobs in
/// flight on each worker, oldest first.
///
/// **The rule.** A job goes into a busy worker's pipe (behind the job it runs) only while every
/// live worker is busy (or for tasks known to be tiny): prefetching is for throughput when nobody
/// is idle. And when a worker becomes idle while another holds jobs it has not started, it takes
/// them back from there (`steal`): no job waits behind a running one while a worker is idle.
pub(crate) struct Queue {
    global: VecDeque<Job>,
    targeted: Vec<VecDeque<Job>>,
    inflight: Vec<VecDeque<Job>>,
    seats: Vec<Seat>,
    /// Per worker: jobs whose last results the pool took from the journal before the worker
    /// sent them, with their length; their frames are still to come.
    taken: Vec<Vec<(u64, usize)>>,
    next_id: u64,
    depth: usize,
    /// Tasks in `global` and `targeted`: queued, not yet sent to a worker.
    queued_tasks: usize,
    /// Where `queued_tasks` is published (`metrics` feature).
    published: QueueDepth,
    /// At most this many tasks may be queued (`max_queued_tasks`)...
    max_queued: Option<usize>,
    /// ...and these calls wait for room.
    room: Vec<Waker>,
    /// A worker retires after this many tasks.
    lifespan: Option<u64>,
}

impl Queue {
    pub(crate) fn new(
        workers: usize,
        depth: usize,
        max_queued: Option<usize>,
        lifespan: Option<u64>,
        published: QueueDepth,
    ) -> Queue {
        Queue {
            global: VecDeque::new(),
            targeted: (0..workers).map(|_| VecDeque::new()).collect(),
            inflight: (0..workers).map(|_| VecDeque::new()).collect(),
            seats: (0..workers).map(|_| Seat::default()).collect(),
            taken: (0..workers).map(|_| Vec::new()).collect(),
            next_id: 0,
            depth,
            queued_tasks: 0,
            published,
            max_queued,
            room: Vec::new(),
            lifespan,
        }
    }

    /// How many tasks worker `slot` was sent and may still run (none taken back).
    pub(crate) fn tasks_sent(&self, slot: usize) -> u64 {
        self.seats[slot].tasks
    }

    /// Whether a job of `len` tasks may be queued now: the queue has room for it, or is empty
    /// (a chunk larger than the bound goes in alone). When not, and `waker` is given, it is
    /// woken once tasks leave the queue.
    pub(crate) fn admits(&mut self, len: usize, waker: Option<&Waker>) -> bool {
        let Some(max) = self.max_queued else {
            return true;
        };
        if self.queued_tasks == 0 || self.queued_tasks + len <= max {
            return true;
        }
        if let Some(w) = waker {
            if !self.room.iter().any(|r| r.will_wake(w)) {
                self.room.push(w.clone());
            }
        }
        false
    }

    /// How many tasks are in flight on workers, not finished.
    pub(crate) fn tasks_in_flight(&self) -> usize {
        self.inflight
            .iter()
            .flatten()
            .map(|j| j.len - j.delivered)
            .sum()
    }

    /// Whether a worker runs in `slot`.
    pub(crate) fn is_live(&self, slot: usize) -> bool {
        self.seats[slot].live
    }

    /// How many tasks are queued and not yet sent to a worker.
    pub(crate) fn queued_tasks(&self) -> usize {
        self.queued_tasks
    }

    /// `len` tasks left the queue: calls waiting for room look again.
    fn left_queue(&mut self, len: usize) {
        self.queued_tasks -= len;
        self.published.set(self.queued_tasks);
        if !self.room.is_empty() && self.max_queued.is_some_and(|m| self.queued_tasks < m) {
            self.room.drain(..).for_each(Waker::wake);
        }
    }

    /// Queues `job` for any worker, or for worker `target` alone.
    pub(crate) fn push(&mut self, mut job: Job, target: Option<usize>) {
        self.queued_tasks += job.len;
        self.published.set(self.queued_tasks);
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
            self.queued_tasks += job.len - job.delivered;
            self.published.set(self.queued_tasks);
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

    /// A new worker runs in `slot`: its jobs are numbered afresh.
    pub(crate) fn connected(&mut self, slot: usize, claims: Option<Arc<dyn Claims>>) {
        self.seats[slot] = Seat {
            live: true,
            claims,
            sent: 0,
            tasks: 0,
        };
    }

    /// The worker in `slot` ended.
    pub(crate) fn disconnected(&mut self, slot: usize) {
        self.seats[slot] = Seat::default();
        self.taken[slot].clear();
    }

    /// Job `id` of `len` tasks landed before the worker sent its last frames (their results were
    /// taken from the journal).
    pub(crate) fn taken_early(&mut self, slot: usize, id: u64, len: usize) {
        self.taken[slot].push((id, len));
    }

    /// Whether the frame of tasks `..end` of job `id` brings results already taken early; the
    /// job's last such frame forgets it.
    pub(crate) fn was_taken(&mut self, slot: usize, id: u64, end: usize) -> bool {
        let taken = &mut self.taken[slot];
        let Some(i) = taken.iter().position(|&(j, _)| j == id) else {
            return false;
        };
        if end >= taken[i].1 {
            taken.remove(i);
        }
        true
    }

    /// The live workers other than `slot` with nothing in flight.
    pub(crate) fn idle_besides(&self, slot: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.seats.len())
            .filter(move |&s| s != slot && self.seats[s].live && self.inflight[s].is_empty())
    }

    /// Whether a live worker other than `slot` has nothing in flight.
    fn someone_idle(&self, slot: usize) -> bool {
        self.idle_besides(slot).next().is_some()
    }

    /// Drops the queued jobs of `call`.
    pub(crate) fn remove_call(&mut self, call: &Arc<CallLink>) {
        let mut removed = 0;
        let mut keep = |j: &Job| {
            let other = !Arc::ptr_eq(&j.call, call);
            if !other {
                removed += j.len - j.delivered;
            }
            other
        };
        self.global.retain(&mut keep);
        for q in &mut self.targeted {
            q.retain(&mut keep);
        }
        self.left_queue(removed);
    }

    /// The job worker `slot` runs now, or runs next: the oldest in flight there.
    pub(crate) fn running(&self, slot: usize) -> Option<&Job> {
        self.inflight[slot].front()
    }

    /// The job sent last to worker `slot`, if it is still in flight.
    pub(crate) fn last_sent(&self, slot: usize) -> Option<&Job> {
        self.inflight[slot].back()
    }

    /// The shortest task timeout of the jobs in flight on `slot`, if any has one.
    pub(crate) fn shortest_timeout(&self, slot: usize) -> Option<Duration> {
        self.inflight[slot]
            .iter()
            .filter_map(|j| j.call.timeout())
            .min()
    }

    /// Whether a job in flight on `slot` was sent as `hold`: the worker may be holding results.
    pub(crate) fn holds(&self, slot: usize) -> bool {
        self.inflight[slot].iter().any(|j| j.hold)
    }

    /// The jobs in flight on `slot`, oldest first.
    pub(crate) fn in_flight(&self, slot: usize) -> impl Iterator<Item = &Job> {
        self.inflight[slot].iter()
    }

    /// The jobs in flight on `slot` behind the one it runs (or runs next).
    pub(crate) fn waiting_on(&self, slot: usize) -> impl Iterator<Item = &Job> {
        self.inflight[slot].iter().skip(1)
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
            let tiny = match self.may_hold(slot, next, from_targeted) {
                Some(tiny) => tiny,
                None if next.call.is_cancelled() => false,
                None => return None,
            };
            let mut job = if from_targeted {
                self.targeted[slot].pop_front()
            } else {
                self.global.pop_front()
            }?;
            self.left_queue(job.len - job.delivered);
            if job.call.is_cancelled() {
                continue;
            }
            let send = match &mut job.payload {
                Payload::Local { chunk, takeback } => Outgoing::Local {
                    id: job.id,
                    chunk: chunk.take()?,
                    timed: takeback.is_timed().then(|| job.call.timeout_us()),
                },
                Payload::Remote { entry, body, skip } => {
                    let seat = &mut self.seats[slot];
                    seat.sent = seat.sent.wrapping_add(1);
                    job.on_worker = seat.sent;
                    job.hold = tiny;
                    Outgoing::Remote {
                        id: job.id,
                        seq: job.on_worker,
                        hold: tiny,
                        entry: *entry,
                        count: job.len as u32,
                        span: body.span(*skip),
                        inline: body.span(*skip).is_none().then(|| (body.clone(), *skip)),
                        timeout_us: job.call.timeout_us(),
                    }
                }
            };
            self.seats[slot].tasks += job.len as u64;
            if crate::observe::registry::watched() {
                job.sent = crate::proto::deadline::coarse_us();
            }
            self.inflight[slot].push_back(job);
            return Some(send);
        }
    }

    /// For idle worker `thief`: takes back, from the busy worker holding the most jobs it has not
    /// started, every one of them, and puts them at the front of the queue. `true` if it took
    /// any.
    pub(crate) fn steal(&mut self, thief: usize) -> bool {
        let victims = (0..self.seats.len()).filter(|&s| s != thief && self.inflight[s].len() > 1);
        victims
            .max_by_key(|&s| self.inflight[s].len())
            .is_some_and(|victim| self.take_back(victim))
    }

    /// Takes back every job worker `slot` holds and has not started, and puts them at the front
    /// of the queue. `true` if it took any. Jobs for that worker alone (`order_tasks`) stay.
    pub(crate) fn take_back(&mut self, slot: usize) -> bool {
        let Some(claims) = self.seats[slot].claims.clone() else {
            return false;
        };
        let queue = &mut self.inflight[slot];
        let Some(last) = queue.back().map(|j| j.on_worker) else {
            return false;
        };
        for _ in 0..8 {
            let claimed = claims.claimed();
            // Jobs after the claimed one have not started: the worker runs them in order.
            let unstarted = queue
                .iter()
                .rev()
                .take_while(|j| {
                    let after = j.on_worker.wrapping_sub(claimed);
                    after != 0 && after as usize <= MAX_QUEUED + 1
                })
                .count();
            let from = queue.len() - unstarted;
            if unstarted == 0 || queue.range(from..).any(|j| j.target.is_some()) {
                return false;
            }
            if claims.revoke(claimed, last) {
                let taken: Vec<Job> = queue.drain(from..).collect();
                self.seats[slot].tasks -= taken.iter().map(|j| j.len as u64).sum::<u64>();
                self.requeue(taken);
                return true;
            }
        }
        false
    }

    /// Whether worker `slot` may take `next` now. An idle worker may. A busy one holds it behind
    /// the job it runs only while nobody else is idle (or `next` is for it alone), and up to
    /// `depth` jobs; more, or even while another worker is idle, only for tasks known to be
    /// tiny: at most [`SMALL_WINDOW`] tasks and `SMALL_WINDOW_WORK` of work in its pipe, which
    /// wait little, and which an idle worker takes back in any case (so not on a worker without
    /// a journal). Never more than its journal can take back.
    ///
    /// `Some(tiny)` if it may, where `tiny` says its tasks are known to be tiny.
    fn may_hold(&self, slot: usize, next: &Job, targeted: bool) -> Option<bool> {
        let held = &self.inflight[slot];
        let tasks: usize = held.iter().map(|j| j.len).sum::<usize>() + next.len;
        let ns = next.call.ns_per_task();
        let tiny = ns != 0
            && tasks <= SMALL_WINDOW
            && tasks as u64 * ns <= SMALL_WINDOW_WORK.as_nanos() as u64;
        if held.is_empty() {
            return Some(tiny);
        }
        // A worker that was sent its last task gets no other: it would only hand it back.
        if self.lifespan.is_some_and(|l| self.seats[slot].tasks >= l) {
            return None;
        }
        // The claim word can take back the jobs up to MAX_QUEUED after the one the worker runs:
        // a worker never holds jobs further than that behind the oldest it has (numbers of jobs
        // taken back in between count too).
        let seat = &self.seats[slot];
        let span = seat.sent.wrapping_add(1).wrapping_sub(held[0].on_worker) as usize;
        if seat.claims.is_some() && (held.len() > MAX_QUEUED || span >= MAX_QUEUED) {
            return None;
        }
        // Tiny jobs go in even while another worker is idle only where that worker can take
        // them back.
        let ok = (tiny && seat.claims.is_some())
            || (held.len() < self.depth && (targeted || !self.someone_idle(slot)));
        ok.then_some(tiny)
    }

    /// Takes job `id` out of `slot`'s flight, if it is the oldest there.
    pub(crate) fn land(&mut self, slot: usize, id: u64) -> Option<Job> {
        match self.inflight[slot].front() {
            Some(j) if j.id == id => self.inflight[slot].pop_front(),
            _ => None,
        }
    }

    /// Every job in flight on `slot`, oldest first: its worker ended.
    pub(crate) fn unwind(&mut self, slot: usize) -> VecDeque<Job> {
        self.disconnected(slot);
        std::mem::take(&mut self.inflight[slot])
    }

    /// Every queued job, with the worker it waited for.
    pub(crate) fn drain_queued(&mut self) -> Vec<(Option<usize>, Job)> {
        let mut jobs: Vec<(Option<usize>, Job)> =
            self.global.drain(..).map(|j| (None, j)).collect();
        for (slot, q) in self.targeted.iter_mut().enumerate() {
            jobs.extend(q.drain(..).map(|j| (Some(slot), j)));
        }
        let queued = self.queued_tasks;
        self.left_queue(queued);
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A worker that claims its jobs as the journal's would: the number of the last job it
    /// claimed, and revocation bits for the jobs after it.
    #[derive(Default)]
    struct FakeWorker {
        word: Mutex<(u8, u64)>,
        /// Claims its next job when the pool next asks, as a worker racing the pool would.
        races: Mutex<bool>,
    }

    impl FakeWorker {
        /// The worker reaches job `seq`: `true` if it runs it, `false` if it skips it.
        fn claim(&self, seq: u8) -> bool {
            let mut w = self.word.lock().unwrap();
            let shift = seq.wrapping_sub(w.0) as u32;
            let revoked = (w.1 >> (shift - 1)) & 1 == 1;
            *w = (seq, w.1.checked_shr(shift).unwrap_or(0));
            !revoked
        }
    }

    impl Claims for FakeWorker {
        fn claimed(&self) -> u8 {
            let claimed = self.word.lock().unwrap().0;
            if std::mem::take(&mut *self.races.lock().unwrap()) {
                self.claim(claimed.wrapping_add(1));
            }
            claimed
        }
        fn revoke(&self, last_claimed: u8, upto: u8) -> bool {
            let mut w = self.word.lock().unwrap();
            if w.0 != last_claimed {
                return false;
            }
            w.1 |= (1u64 << upto.wrapping_sub(last_claimed)) - 1;
            true
        }
    }

    fn call() -> Arc<CallLink> {
        fn decode(_: &[u8], _: usize) -> (Box<dyn std::any::Any + Send>, usize, Option<String>) {
            (Box::new(()), 0, None)
        }
        fn locate(_: &[u8], _: usize) -> Option<(String, usize)> {
            None
        }
        let pool = crate::observe::Observer::new(
            None,
            "fork",
            2,
            std::panic::Location::caller(),
            false,
            None,
        );
        let progress = pool.call("map", std::panic::Location::caller());
        CallLink::new(decode, locate, pool, progress).0
    }

    fn job(call: &Arc<CallLink>, seq: u64) -> Job {
        let body = Arc::new(Body::Inline(vec![seq as u8]));
        let payload = Payload::Remote {
            entry: 0,
            body,
            skip: 0,
        };
        Job::new(call.clone(), seq, seq as usize, 1, payload)
    }

    /// A queue of two process workers, both connected, and their fakes.
    fn two_workers(depth: usize) -> (Queue, [Arc<FakeWorker>; 2]) {
        let mut q = Queue::new(2, depth, None, None, QueueDepth::default());
        let workers = [
            Arc::new(FakeWorker::default()),
            Arc::new(FakeWorker::default()),
        ];
        for (slot, w) in workers.iter().enumerate() {
            q.connected(slot, Some(w.clone() as Arc<dyn Claims>));
        }
        (q, workers)
    }

    /// Three jobs, all on worker 0 (worker 1 was not there yet), which runs the first; then
    /// worker 1 arrives, idle.
    fn three_on_worker_0() -> (Queue, [Arc<FakeWorker>; 2]) {
        let (mut q, w) = two_workers(3);
        let c = call();
        for seq in 0..3 {
            q.push(job(&c, seq), None);
        }
        q.disconnected(1);
        for _ in 0..3 {
            q.take(0).unwrap();
        }
        assert!(w[0].claim(1));
        q.connected(1, Some(w[1].clone() as Arc<dyn Claims>));
        (q, w)
    }

    fn sent(out: Option<Outgoing>) -> (u64, u8) {
        match out {
            Some(Outgoing::Remote { id, seq, .. }) => (id, seq),
            _ => panic!("expected a job for a process worker"),
        }
    }

    #[test]
    fn no_job_goes_behind_a_running_one_while_a_worker_is_idle() {
        let (mut q, _) = two_workers(2);
        let c = call();
        for seq in 0..4 {
            q.push(job(&c, seq), None);
        }
        assert_eq!(sent(q.take(0)), (1, 1));
        assert!(q.take(0).is_none(), "worker 1 is idle: the job is for it");
        assert_eq!(sent(q.take(1)), (2, 1));
        // Everyone is busy: now each may hold a second job.
        assert_eq!(sent(q.take(0)), (3, 2));
        assert_eq!(sent(q.take(1)), (4, 2));
        assert!(q.take(0).is_none());
    }

    #[test]
    fn an_idle_worker_takes_back_what_waits_behind_a_running_job() {
        let (mut q, w) = three_on_worker_0();
        assert!(q.steal(1));
        assert_eq!(q.waiting_on(0).count(), 0, "only the running job stays");
        assert_eq!(sent(q.take(1)), (2, 1));
        // Worker 0 skips the frames of the jobs taken from it.
        assert!(!w[0].claim(2) && !w[0].claim(3));
        assert!(!q.steal(1), "nothing left to take");
    }

    #[test]
    fn a_job_the_worker_claimed_meanwhile_is_not_taken_back() {
        let (mut q, w) = three_on_worker_0();
        // The worker finishes job 1 and claims job 2 while the pool takes back.
        *w[0].races.lock().unwrap() = true;
        assert!(q.steal(1));
        assert_eq!(q.waiting_on(0).count(), 1, "job 2 stays: it runs");
        assert_eq!(sent(q.take(1)), (3, 1));
        assert!(!w[0].claim(3), "job 3 was taken back");
    }

    #[test]
    fn jobs_for_one_worker_are_not_taken_by_another() {
        let (mut q, w) = two_workers(2);
        let c = call();
        for seq in 0..3 {
            q.push(job(&c, seq), Some(0));
        }
        for _ in 0..2 {
            q.take(0).unwrap();
        }
        assert!(w[0].claim(1));
        assert!(q.take(1).is_none());
        assert!(!q.steal(1));
    }
}
