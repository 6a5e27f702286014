//! The driver of one process worker: a *writer* task that feeds it jobs and a *driver* that
//! reads its results, notices its end and settles what it was doing. Reading and writing are
//! separate tasks so a worker blocked on writing a large result never deadlocks against us
//! writing a large input.

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Core;
use super::job::{CallLink, Job, Outcome, Payload};
use super::queue::{Claims, Outgoing};
use crate::error::{Error, Exit, Kind, Stage};
use crate::proto::body::ARENA_MIN;
use crate::proto::frame;
use crate::proto::{Batch, Event, Failure, FromWorker, ToWorker};
use crate::start::{BoxFuture, Connected, Process, Rx, Tx};
use crate::sys::journal::Journal;
use crate::task::Entry;
use crate::worker::{Exited, Salvaged, ThreadEnd, Watch};

/// How one worker's life ended.
pub(super) enum Ended {
    /// It ran its exit function and left.
    Done,
    /// It died or was killed; replace it.
    Died,
    /// The pool was dropped.
    Stopped,
    /// Its life is over (lifespan, memory): it takes no more tasks and its slot is free for
    /// its successor; what is left of it (its exit function) is this future, which stores its
    /// exit result and reaps it.
    Retired(BoxFuture<'static, ()>),
}

enum Why {
    Exit(Result<Vec<u8>, Failure>),
    Died,
    Broken(String),
    Cancelled,
    Stopped,
    /// The task whose deadline word this is ran past it.
    TimedOut(u64),
    /// Its exit function ran past `worker_exit_timeout`.
    ExitTimedOut,
    /// Its life is over: it runs its exit function next.
    Retiring,
}

/// Who a worker's end is blamed on, by `settle`.
pub(super) enum Cause {
    /// The task it was running, with this error (its death, a broken protocol, a cancellation).
    Task(Error),
    /// The task it was running, which ran past its deadline (`now_us` time) and was killed.
    TimedOut { deadline_us: u64 },
    /// Nobody: it was killed for a task that had finished meanwhile; the one it ran runs again.
    Innocent,
}

enum Heard {
    /// Results of some tasks, and the failure of the task after them if that ended the batch;
    /// results in the frame are `rx.body(body)`, until the next read.
    Done(Batch, Option<Box<Failure>>, Range<usize>),
    Exit(Result<Vec<u8>, Failure>),
    /// The worker's stream ended (between frames, or inside one: it died while writing).
    Eof,
    /// News from the worker.
    Event(Event),
    /// Its life is over.
    Retiring,
    Broken(String),
}

/// The next event of a process worker. Cancel-safe: each await is one read.
async fn event(rx: &mut Rx) -> Heard {
    match rx.next::<FromWorker>().await {
        Ok(Some(frame)) => match frame.header {
            FromWorker::Done(batch) => Heard::Done(batch, None, frame.body),
            FromWorker::Failed(batch, failure) => Heard::Done(batch, Some(failure), frame.body),
            FromWorker::Exit(None) => Heard::Exit(Ok(rx.body(frame.body).to_vec())),
            FromWorker::Exit(Some(fail)) => Heard::Exit(Err(*fail)),
            FromWorker::Fatal(m) => Heard::Broken(m),
            FromWorker::Event(event) => Heard::Event(event),
            FromWorker::Retiring => Heard::Retiring,
            other => Heard::Broken(format!("unexpected message {other:?}")),
        },
        Ok(None) => Heard::Eof,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Heard::Eof,
        Err(e) => Heard::Broken(e.to_string()),
    }
}

impl Tx {
    async fn send_jobs(&mut self, jobs: Vec<Outgoing>) -> std::io::Result<()> {
        let Tx { io, buf } = self;
        buf.clear();
        for job in jobs {
            let Outgoing::Remote {
                id,
                seq,
                hold,
                entry,
                count,
                span,
                inline,
                timeout_us,
            } = job
            else {
                continue;
            };
            let header = ToWorker::Task {
                id,
                seq,
                hold,
                entry,
                count,
                arena: span,
                timeout_us,
            };
            let inline = inline
                .as_ref()
                .map_or(&[][..], |(body, skip)| body.inline(*skip));
            if inline.len() > ARENA_MIN {
                frame::encode_head(buf, &header, inline.len());
                frame::write_parts(io, buf, inline).await?;
                buf.clear();
            } else {
                frame::encode(buf, &header, inline);
            }
        }
        if !buf.is_empty() {
            frame::write_parts(io, buf, &[]).await?;
        }
        Ok(())
    }

    async fn send_shutdown(&mut self, exit: Option<Entry>) -> std::io::Result<()> {
        self.buf.clear();
        frame::encode(
            &mut self.buf,
            &ToWorker::Shutdown {
                exit: exit.map(|e| e.offset),
            },
            &[],
        );
        frame::write_parts(&mut self.io, &self.buf, &[]).await
    }
}

/// A worker that sends nothing for this long while it holds results of tiny tasks (it runs a
/// job that takes long) has them taken from its journal.
const HARVEST_AFTER: Duration = Duration::from_millis(1);

async fn write_loop(
    core: Arc<Core>,
    slot: usize,
    mut tx: Tx,
    journal: Option<Arc<Journal>>,
    exiting: tokio::sync::oneshot::Sender<()>,
) {
    // Armed while jobs whose results the worker may hold are in flight.
    let mut tick = std::pin::pin!(tokio::time::sleep(HARVEST_AFTER));
    let mut armed = false;
    // Frames of results heard of at the last tick.
    let mut heard = 0;
    loop {
        let next = tokio::select! {
            next = core.next_jobs(slot) => next,
            _ = &mut tick, if armed => {
                let now = core.heard[slot].load(Ordering::Relaxed);
                armed = match (now == heard, journal.as_deref()) {
                    // It sent nothing for a whole tick: take what it holds.
                    (true, Some(j)) => core.harvest(slot, j),
                    _ => core.state().queue.holds(slot),
                };
                heard = now;
                tick.as_mut().reset(tokio::time::Instant::now() + HARVEST_AFTER);
                continue;
            }
        };
        let batch = match next {
            Next::Jobs(batch) => batch,
            Next::Shutdown => {
                let _ = tx.send_shutdown(core.spec.exit).await;
                let _ = exiting.send(());
                // Keep the channel open until the worker has answered.
                std::future::pending::<()>().await;
                return;
            }
            Next::Stop => return,
        };
        let holds = batch
            .iter()
            .any(|j| matches!(j, Outgoing::Remote { hold: true, .. }));

        if batch
            .iter()
            .any(|j| matches!(j, Outgoing::Remote { timeout_us, .. } if *timeout_us != 0))
        {
            core.timed[slot].notify_one();
        }
        if tx.send_jobs(batch).await.is_err() {
            return; // the driver sees the worker's end
        }
        if holds && !armed && journal.is_some() {
            armed = true;
            tick.as_mut()
                .reset(tokio::time::Instant::now() + HARVEST_AFTER);
        }
    }
}

/// Serves one incarnation of a worker until it leaves.
pub(super) async fn serve(core: &Arc<Core>, slot: usize, conn: Connected) -> Ended {
    {
        let mut st = core.state();
        st.pids[slot] = conn.pid();
        let claims = match &conn {
            Connected::Process {
                journal: Some(j), ..
            } => Some(j.clone() as Arc<dyn Claims>),
            _ => None,
        };
        st.queue.connected(slot, claims);
        if let Connected::Thread { watch, .. } = &conn {
            // The thread takes jobs from now on (a successor waited for this).
            st.watches[slot] = Some(watch.clone());
        }
    }
    // A new worker is idle: it may take jobs that wait behind another's running one.
    core.wake(Some(slot), false);
    match conn {
        Connected::Thread { ended, watch } => serve_thread(core, slot, ended, watch).await,
        Connected::Process {
            tx,
            rx,
            journal,
            proc,
        } => serve_process(core, slot, tx, rx, journal, proc).await,
    }
}

/// A thread worker runs by itself (see `ThreadWorker`); wait for it to leave, or for one of its
/// tasks to run past its deadline (then it is abandoned, and the slot gets another thread).
async fn serve_thread(
    core: &Arc<Core>,
    slot: usize,
    ended: tokio::sync::oneshot::Receiver<ThreadEnd>,
    watch: Arc<Watch>,
) -> Ended {
    let mut ended = std::pin::pin!(ended);
    // Armed once the thread started its exit function.
    let mut exit_late = std::pin::pin!(async {
        watch.exiting.notified().await;
        match core.settings.exit_timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    });
    let result = loop {
        tokio::select! {
            r = &mut ended => break r,
            word = core.expired(slot, || watch.deadline()) => {
                if core.abandon(slot, &watch, word) {
                    return Ended::Died;
                }
            }
            _ = &mut exit_late => {
                // A thread cannot be killed: it is left to finish its exit function.
                watch.abandon(&core.abandoned);
                core.state().watches[slot] = None;
                return core.exit_timed_out(slot);
            }
        }
    };
    match result {
        Ok(ThreadEnd::Retired(exited)) => {
            // The thread left its slot; its exit function runs, within `worker_exit_timeout`.
            let core = core.clone();
            let watch = watch.clone();
            Ended::Retired(Box::pin(async move {
                let Some(limit) = core.settings.exit_timeout else {
                    let _ = exited.await;
                    return;
                };
                if tokio::time::timeout(limit, exited).await.is_err() {
                    watch.abandon(&core.abandoned);
                    let e = Error::timeout(Stage::Exit, limit, None).with_worker(slot);
                    core.store_retired(Err(e));
                }
            }))
        }
        Ok(how) => {
            let mut st = core.state();
            st.queue.disconnected(slot);
            st.watches[slot] = None;
            drop(st);
            match how {
                ThreadEnd::Done => Ended::Done,
                _ => Ended::Stopped,
            }
        }
        Err(_) => {
            // The thread ended without saying so: something outside a task panicked. Its job's
            // inputs were moved into the thread: they are gone with it.
            let died = Error::died(Exit::Unknown, Stage::Task);
            let jobs = {
                let mut st = core.state();
                st.watches[slot] = None;
                st.queue.unwind(slot)
            };
            for job in jobs {
                super::job::fail(job, Some(slot), died.clone());
            }
            core.wake(None, false);
            Ended::Died
        }
    }
}

async fn serve_process(
    core: &Arc<Core>,
    slot: usize,
    tx: Tx,
    mut rx: Rx,
    journal: Option<Arc<Journal>>,
    mut proc: Box<dyn Process>,
) -> Ended {
    let (exiting, exit_started) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(write_loop(core.clone(), slot, tx, journal.clone(), exiting));
    let journal = journal.as_deref();
    let why = {
        let mut exited = std::pin::pin!(proc.wait());
        // Armed once the worker was told to run its exit function.
        let mut exit_late = std::pin::pin!(async {
            match (exit_started.await, core.settings.exit_timeout) {
                (Ok(()), Some(limit)) => tokio::time::sleep(limit).await,
                _ => std::future::pending().await,
            }
        });
        let mut expired = std::pin::pin!(core.expired(slot, || match journal {
            Some(j) => j.deadline(),
            None => (0, 0),
        }));
        'events: loop {
            let stop = core.stop.notified();
            if core.is_stopped() {
                break 'events Why::Stopped;
            }
            tokio::select! {
                biased;
                _ = stop => break 'events Why::Stopped,
                ev = event(&mut rx) => match ev {
                    Heard::Done(batch, failure, body) => {
                        let n = core.heard[slot].load(Ordering::Relaxed);
                        core.heard[slot].store(n + 1, Ordering::Relaxed);
                        if let Err(m) = core.take_batch(slot, journal, batch, failure, rx.body(body)) {
                            break 'events Why::Broken(m);
                        }
                    }
                    Heard::Exit(r) => break 'events Why::Exit(r),
                    Heard::Retiring => break 'events Why::Retiring,
                    Heard::Event(event) => core.heard(slot, event),
                    Heard::Eof => break 'events Why::Died,
                    Heard::Broken(m) => break 'events Why::Broken(m),
                },
                _ = core.kill[slot].notified() => {
                    if core.running_cancelled(slot) {
                        break 'events Why::Cancelled;
                    }
                }
                word = &mut expired => break 'events Why::TimedOut(word),
                _ = &mut exit_late => break 'events Why::ExitTimedOut,
                _ = &mut exited => {
                    // Read what the worker wrote before it ended, then treat it as dead. (A
                    // process it started may hold its end of the stream open: do not wait for
                    // the end of the stream for long.)
                    loop {
                        match tokio::time::timeout(Duration::from_millis(200), event(&mut rx)).await {
                            Ok(Heard::Done(batch, failure, body)) => {
                                if let Err(m) = core.take_batch(slot, journal, batch, failure, rx.body(body)) {
                                    break 'events Why::Broken(m);
                                }
                            }
                            Ok(Heard::Exit(r)) => break 'events Why::Exit(r),
                            Ok(Heard::Retiring) => break 'events Why::Retiring,
                            Ok(Heard::Event(event)) => core.heard(slot, event),
                            Ok(Heard::Broken(m)) => break 'events Why::Broken(m),
                            Ok(Heard::Eof) | Err(_) => break 'events Why::Died,
                        }
                    }
                }
            }
        }
    };
    if let Why::Retiring = why {
        // Every result it sent arrived before this: the rest of its tasks are the pool's again,
        // and its slot its successor's, while it runs its exit function. Its writer stops first,
        // so that it takes no job of the successor's.
        writer.abort();
        let _ = writer.await;
        core.settle(slot, journal, Cause::Innocent, true);
        core.state().pids[slot] = None;
        return Ended::Retired(Box::pin(retire(core.clone(), slot, rx, proc)));
    }
    finish(core, slot, writer, proc, journal, why).await
}

/// The rest of a retired worker's life: its exit function, within `worker_exit_timeout`. Its
/// exit result is kept with the pool's, and it is reaped.
async fn retire(core: Arc<Core>, slot: usize, mut rx: Rx, mut proc: Box<dyn Process>) {
    let exit = async {
        loop {
            match event(&mut rx).await {
                Heard::Exit(r) => break Ok(r),
                Heard::Event(event) => core.heard(slot, event),
                Heard::Eof => break Err(None),
                Heard::Broken(m) => break Err(Some(Error::new(Kind::Protocol(m)))),
                // It sent every result before it retired.
                Heard::Done(..) | Heard::Retiring => {
                    break Err(Some(Error::new(Kind::Protocol(
                        "results after retiring".into(),
                    ))));
                }
            }
        }
    };
    let heard = match core.settings.exit_timeout {
        Some(limit) => tokio::time::timeout(limit, exit)
            .await
            .unwrap_or_else(|_| Err(Some(Error::timeout(Stage::Exit, limit, None)))),
        None => exit.await,
    };
    if heard.is_err() {
        proc.kill();
    }
    let status = match tokio::time::timeout(Duration::from_secs(10), proc.wait()).await {
        Ok(status) => status,
        Err(_) => {
            proc.kill();
            proc.wait().await
        }
    };
    let r = match heard {
        Ok(r) => r
            .map(Exited::Bytes)
            .map_err(|f| Error::failed(f, Stage::Exit)),
        Err(Some(e)) => Err(e),
        Err(None) => Err(Error::died(status, Stage::Exit)),
    };
    core.store_retired(r.map_err(|e| e.with_worker(slot)));
}

async fn finish(
    core: &Arc<Core>,
    slot: usize,
    writer: JoinHandle<()>,
    mut proc: Box<dyn Process>,
    journal: Option<&Journal>,
    why: Why,
) -> Ended {
    // Stop the writer for good before touching the jobs in flight: a writer still running could
    // otherwise move a job into flight after they were requeued, and it would be lost. After an
    // orderly exit nothing is in flight, and the writer is parked for good: no need to wait.
    writer.abort();
    if !matches!(why, Why::Exit(_)) {
        let _ = writer.await;
        proc.kill();
    }
    // A worker that ran its exit function leaves by itself; do not wait forever.
    let exit = match tokio::time::timeout(Duration::from_secs(10), proc.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            proc.kill();
            proc.wait().await
        }
    };
    {
        let mut st = core.state();
        st.pids[slot] = None;
        if matches!(why, Why::Exit(_) | Why::ExitTimedOut | Why::Stopped) {
            st.queue.disconnected(slot);
        }
    }
    match why {
        Why::Exit(r) => core.store_exit(slot, r.map(Exited::Bytes)),
        Why::ExitTimedOut => core.exit_timed_out(slot),
        Why::Retiring => unreachable!("a retiring worker is not finished here"),
        Why::Stopped => Ended::Stopped,
        Why::Cancelled => {
            // It ran a job of a cancelled call: nobody reads this error.
            core.settle(slot, journal, Cause::Task(Error::closed()), true);
            Ended::Died
        }
        Why::Broken(m) => {
            let e = Error::new(Kind::Protocol(m));
            core.settle(slot, journal, Cause::Task(e), false);
            Ended::Died
        }
        Why::Died => {
            let died = Error::died(exit, Stage::Task);
            core.settle(slot, journal, Cause::Task(died), true);
            Ended::Died
        }
        Why::TimedOut(word) => {
            // The task is blamed only if it still ran when the worker died: one that finished
            // between the watchdog's look and the kill is not, and the one after it runs again.
            let (now, epoch) = journal.map_or((0, 0), Journal::deadline);
            let cause = match now == word {
                true => Cause::TimedOut {
                    deadline_us: crate::proto::deadline::deadline_us(word, epoch),
                },
                false => Cause::Innocent,
            };
            core.settle(slot, journal, cause, true);
            Ended::Died
        }
    }
}

/// What a writer does next.
enum Next {
    Jobs(Vec<Outgoing>),
    Shutdown,
    Stop,
}

impl Core {
    /// Waits until `slot` may take jobs, and takes as many as its window allows.
    async fn next_jobs(&self, slot: usize) -> Next {
        loop {
            let notified = self.wake[slot].notified();
            {
                if self.is_stopped() {
                    return Next::Stop;
                }
                let mut st = self.state();
                let mut batch = Vec::new();
                while let Some(job) = st.queue.take(slot) {
                    batch.push(job);
                }
                // Idle with nothing queued: take back what waits behind another worker's
                // running job.
                if batch.is_empty() && st.queue.running(slot).is_none() && st.queue.steal(slot) {
                    while let Some(job) = st.queue.take(slot) {
                        batch.push(job);
                    }
                    let sent = st.queue.tasks_sent(slot);
                    drop(st);
                    self.sent(slot, sent);
                    self.wake(None, false);
                    if !batch.is_empty() {
                        return Next::Jobs(batch);
                    }
                    continue;
                }
                if !batch.is_empty() {
                    // Tiny jobs may go behind a running one while another worker is idle: that
                    // one takes them back unless it has work of its own.
                    let idle: Vec<usize> = st.queue.idle_besides(slot).collect();
                    let sent = st.queue.tasks_sent(slot);
                    drop(st);
                    self.sent(slot, sent);
                    for s in idle {
                        self.wake[s].notify_one();
                    }
                    return Next::Jobs(batch);
                }
                if st.closing && st.queue.drained(slot) {
                    return Next::Shutdown;
                }
            }
            notified.await;
        }
    }

    /// Resolves with the deadline word of a task that ran past its deadline on worker `slot`;
    /// `deadline` reads the worker's word and the epoch it counts from. A word read after its
    /// deadline names a task that was still running then. It wakes at the deadline of the task
    /// that runs, and no later than the shortest timeout of the jobs in flight there (one not
    /// started yet cannot expire sooner), and looks again when another job with a timeout is
    /// sent there.
    pub(super) async fn expired(&self, slot: usize, deadline: impl Fn() -> (u64, u64)) -> u64 {
        use crate::proto::deadline::{deadline_us, now_us, remaining};
        loop {
            let sent = self.timed[slot].notified();
            let (word, epoch) = deadline();
            if word != 0 && now_us() >= deadline_us(word, epoch) {
                return word;
            }
            let running = (word != 0).then(|| remaining(word, epoch));
            let waiting = self.state().queue.shortest_timeout(slot);
            match running.into_iter().chain(waiting).min() {
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = sent => {}
                    }
                }
                None => sent.await,
            }
        }
    }

    /// Thread worker `slot`'s task whose deadline word is `word` ran past its deadline: the
    /// thread is abandoned (it sees `is_cancelled`, and leaves once its task returns), the
    /// task fails, the results its chunk finished are delivered and the inputs it did not start
    /// go back to the front of the queue. `false` if the task finished meanwhile.
    fn abandon(&self, slot: usize, watch: &Watch, word: u64) -> bool {
        let (job, salvaged) = {
            let mut st = self.state();
            let Some(mut salvaged) = st.queue.running(slot).and_then(|job| match &job.payload {
                Payload::Local {
                    salvage: Some(s), ..
                } => s.salvage(word),
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
                let done = salvaged.finished + 1;
                let mut rest = Job::new(
                    job.call.clone(),
                    job.seq,
                    job.first + done,
                    job.len - done,
                    Payload::local(rest),
                );
                rest.target = job.target;
                again.insert(0, rest);
            }
            st.queue.requeue(again);
            (job, salvaged)
        };
        self.wake(None, false);
        let Salvaged { out, finished, .. } = salvaged;
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
        call.deliver(
            first + finished,
            1,
            Some(slot),
            || Outcome::Failed(e),
            Duration::ZERO,
        );
        true
    }

    /// News from worker `slot`. Nothing in the pool uses it yet: task starts are for task
    /// timeouts, progress and output for progress bars (the lifecycle and observability work).
    fn heard(&self, slot: usize, event: Event) {
        let _ = (slot, event);
    }

    /// A batch of results of the job worker `slot` runs: they are delivered, decoded straight
    /// from the journal (or from `inline`, the frame's body), and the job lands when its last
    /// task is done. `Err` says how the batch broke the protocol.
    fn take_batch(
        &self,
        slot: usize,
        journal: Option<&Journal>,
        b: Batch,
        failure: Option<Box<Failure>>,
        inline: &[u8],
    ) -> Result<(), String> {
        // The results, checked before anything changes: they are in the journal's ring (in one
        // piece, within a frame's size) or in the frame.
        let held = match b.at {
            span if span.len == 0 => None,
            span => Some(
                journal
                    .filter(|_| span.len <= self.spec.max_frame as u64)
                    .and_then(|j| j.batch(span.offset, span.len))
                    .ok_or_else(|| format!("results at {span:?} are not in its journal"))?,
            ),
        };
        let tasks = b.values as usize + usize::from(failure.is_some());
        let (first, landed) = {
            let mut st = self.state();
            let end = b.first as usize + tasks;
            if st.queue.was_taken(slot, b.id, end) {
                return Ok(()); // taken from the journal already
            }
            let Some(job) = st.queue.running_mut(slot, b.id) else {
                return Err(format!("results for job {}, which it is not running", b.id));
            };
            if end <= job.delivered && tasks > 0 {
                return Ok(()); // taken from the journal already
            }
            if b.first as usize != job.delivered || tasks == 0 || job.len - job.delivered < tasks {
                return Err(format!(
                    "results for tasks {}..{} of a job of {} tasks, {} of them done",
                    b.first,
                    b.first as usize + tasks,
                    job.len,
                    job.delivered
                ));
            }
            job.delivered += tasks;
            let first = job.first + b.first as usize;
            match job.delivered == job.len {
                true => (first, st.queue.land(slot, b.id).map(Ok)),
                false => (first, Some(Err(job.call.clone()))),
            }
        };
        let call = match landed {
            Some(Ok(job)) => {
                // A writer's window has room again (or, when closing, it may now send the
                // shutdown). The inputs go first: a caller that sees the last result finds
                // their arena block free.
                self.wake[slot].notify_one();
                job.into_call()
            }
            Some(Err(call)) => call,
            None => return Err("the job is gone".into()),
        };
        let values = b.values as usize;
        let busy = Duration::from_nanos(b.busy_ns);
        self.finished(slot, tasks, busy);
        if values > 0 {
            let bytes = held.as_deref().unwrap_or(inline);
            deliver_values(&call, first, values, bytes, slot, busy);
        }
        drop(held);
        if let Some(failure) = failure {
            let e = Error::failed(*failure, Stage::Task).with_worker(slot);
            call.deliver(first + values, 1, Some(slot), || Outcome::Failed(e), busy);
        }
        Ok(())
    }

    /// Takes from the journal the results worker `slot` has held for [`HARVEST_AFTER`] without
    /// sending them, and delivers them (their frames, when they come, are dropped). `true`
    /// while jobs sent as `hold` are in flight there, so the writer keeps watching.
    fn harvest(&self, slot: usize, journal: &Journal) -> bool {
        let held = journal.held().unwrap_or_default();
        for (r, bytes) in held {
            let values = r.values as usize;
            let taken = {
                let mut st = self.state();
                // Only the oldest job's results, in order: a frame of an older one may be on its
                // way, and the driver takes it then.
                let Some(job) = st.queue.running_mut(slot, r.job) else {
                    break;
                };
                if r.first as usize != job.delivered
                    || values == 0
                    || job.len - job.delivered < values
                {
                    break;
                }
                job.delivered += values;
                let first = job.first + r.first as usize;
                match job.delivered == job.len {
                    true => {
                        let len = job.len;
                        let job = st.queue.land(slot, r.job).expect("it is the oldest");
                        st.queue.taken_early(slot, r.job, len);
                        (job.into_call(), first)
                    }
                    false => (job.call.clone(), first),
                }
            };
            let (call, first) = taken;
            self.wake[slot].notify_one();
            deliver_values(&call, first, values, &bytes, slot, Duration::ZERO);
        }
        self.state().queue.holds(slot)
    }

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
                0 => std::mem::take(&mut job.deaths),
                _ => Vec::new(),
            };
            if let Some(exit) = e.death() {
                if earlier.len() < self.settings.max_retries as usize && !job.call.is_cancelled() {
                    match remainder(job, from) {
                        Ok(mut rest) => {
                            rest.deaths = earlier;
                            rest.deaths.push((slot, exit));
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
                Later::Failed(call, index, e) => {
                    call.deliver(index, 1, Some(slot), || Outcome::Failed(e), Duration::ZERO)
                }
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
fn deliver_values(
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
                call.deliver(first, decoded, Some(slot), || Outcome::Local(out), busy);
            }
            if let Some(e) = error {
                let e = Error::codec("could not deserialise a result", e).with_worker(slot);
                call.deliver(
                    first + decoded,
                    count - decoded,
                    Some(slot),
                    || Outcome::Failed(e),
                    Duration::ZERO,
                );
            }
        }
        Err(_) => {
            let e = Error::codec("could not deserialise a result", "its Deserialize panicked")
                .with_worker(slot);
            call.deliver(first, count, Some(slot), || Outcome::Failed(e), busy);
        }
    }
}
