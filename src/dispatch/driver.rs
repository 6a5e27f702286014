//! The driver of one process worker: a *writer* task that feeds it jobs and a *driver* that
//! reads its results, notices its end and settles what it was doing. Reading and writing are
//! separate tasks so a worker blocked on writing a large result never deadlocks against us
//! writing a large input.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Core;
use super::queue::{Claims, Outgoing};
use super::settle::{Cause, deliver_values};
use crate::error::{Error, Exit, Kind, Stage, describe_used};
use crate::observe::stats::Cause as RestartCause;
use crate::proto::body::ARENA_MIN;
use crate::proto::frame;
use crate::proto::{Batch, Event, Failure, FromWorker, ToWorker};
use crate::start::{BoxFuture, Connected, Process, Rx, Tx};
use crate::sys::journal::Journal;
use crate::task::Entry;
use crate::worker::{Exited, ThreadEnd, Watch};

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
    /// A worker on another host stopped itself: its task ran past its deadline.
    StoppedItself,
    /// Its exit function ran past `worker_exit_timeout`.
    ExitTimedOut,
    /// Its life is over (`memory`: for its memory): it runs its exit function next.
    Retiring(bool),
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
    /// Its life is over (`memory`: for its memory).
    Retiring(bool),
    /// Its task ran past its deadline, and it ends itself.
    TimedOut,
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
            FromWorker::Retiring { memory } => Heard::Retiring(memory),
            FromWorker::TimedOut => Heard::TimedOut,
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
                core.exit_starts(slot);
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

        let shortest = batch
            .iter()
            .filter_map(|j| match j {
                Outgoing::Remote { timeout_us, .. } if *timeout_us != 0 => Some(*timeout_us),
                _ => None,
            })
            .min();
        if let Some(t) = shortest {
            core.timed_sent(slot, t);
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
            relays,
            ..
        } => serve_process(core, slot, tx, rx, journal, proc, relays).await,
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
                    core.ended(slot, RestartCause::Timeout, "abandoned: a task past its deadline".into());
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
                    core.store_retired(slot, Err(e));
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
            core.ended(
                slot,
                RestartCause::Died,
                "its thread ended outside a task".into(),
            );
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
    relays: Vec<JoinHandle<()>>,
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
                    Heard::Retiring(memory) => break 'events Why::Retiring(memory),
                    Heard::TimedOut => break 'events Why::StoppedItself,
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
                            Ok(Heard::Retiring(memory)) => break 'events Why::Retiring(memory),
                            Ok(Heard::TimedOut) => break 'events Why::StoppedItself,
                            Ok(Heard::Event(event)) => core.heard(slot, event),
                            Ok(Heard::Broken(m)) => break 'events Why::Broken(m),
                            Ok(Heard::Eof) | Err(_) => break 'events Why::Died,
                        }
                    }
                }
            }
        }
    };
    if let Why::Retiring(memory) = why {
        // Every result it sent arrived before this: the rest of its tasks are the pool's again,
        // and its slot its successor's, while it runs its exit function. Its writer stops first,
        // so that it takes no job of the successor's.
        writer.abort();
        let _ = writer.await;
        core.settle(slot, journal, Cause::Innocent, true);
        core.state().pids[slot] = None;
        let reason = match memory {
            true => (RestartCause::Memory, "retired: its memory limit"),
            false => (RestartCause::Lifespan, "retired: its lifespan"),
        };
        core.ended(slot, reason.0, reason.1.to_owned());
        core.exit_starts(slot);
        return Ended::Retired(Box::pin(retire(core.clone(), slot, rx, proc, relays)));
    }
    finish(core, slot, writer, proc, journal, why, relays).await
}

/// Waits for what a worker printed to have been relayed: its relays end when its output does,
/// soon after it (not at once if a process it started still holds its output open).
async fn relayed(relays: Vec<JoinHandle<()>>) {
    for r in relays {
        let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
    }
}

/// The rest of a retired worker's life: its exit function, within `worker_exit_timeout`. Its
/// exit result is kept with the pool's, and it is reaped.
async fn retire(
    core: Arc<Core>,
    slot: usize,
    mut rx: Rx,
    mut proc: Box<dyn Process>,
    relays: Vec<JoinHandle<()>>,
) {
    let exit = async {
        loop {
            match event(&mut rx).await {
                Heard::Exit(r) => break Ok(r),
                Heard::Event(event) => core.heard(slot, event),
                Heard::Eof => break Err(None),
                Heard::Broken(m) => break Err(Some(Error::new(Kind::Protocol(m)))),
                // It sent every result before it retired, and runs no task since.
                Heard::Done(..) | Heard::Retiring(_) | Heard::TimedOut => {
                    break Err(Some(Error::new(Kind::Protocol(
                        "a task's message after retiring".into(),
                    ))));
                }
            }
        }
    };
    let timed_exit = async {
        match core.settings.exit_timeout {
            Some(limit) => tokio::time::timeout(limit, exit)
                .await
                .unwrap_or_else(|_| Err(Some(Error::timeout(Stage::Exit, limit, None)))),
            None => exit.await,
        }
    };
    // The pool stopped (dropped, or `shutdown_timeout` ran out): it is killed like the others.
    let stopped = async {
        loop {
            let stop = core.stop.notified();
            if core.is_stopped() {
                return;
            }
            stop.await;
        }
    };
    let heard = tokio::select! {
        heard = timed_exit => heard,
        () = stopped => Err(Some(Error::closed())),
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
    relayed(relays).await;
    let r = match heard {
        Ok(r) => r
            .map(Exited::Bytes)
            .map_err(|f| Error::failed(f, Stage::Exit)),
        Err(Some(e)) => Err(e),
        Err(None) => Err(Error::died(status, Stage::Exit).with_used(proc.used())),
    };
    core.store_retired(slot, r.map_err(|e| e.with_worker(slot)));
}

async fn finish(
    core: &Arc<Core>,
    slot: usize,
    writer: JoinHandle<()>,
    mut proc: Box<dyn Process>,
    journal: Option<&Journal>,
    why: Why,
    relays: Vec<JoinHandle<()>>,
) -> Ended {
    // Stop the writer for good before touching the jobs in flight: a writer still running could
    // otherwise move a job into flight after they were requeued, and it would be lost. After an
    // orderly exit nothing is in flight, and the writer is parked for good: no need to wait.
    writer.abort();
    if !matches!(why, Why::Exit(_)) {
        let _ = writer.await;
        // A worker whose stream ended is given a moment to be gone by itself, so that its own
        // exit status is read (a launcher such as ssh passes on its remote worker's a little
        // after the stream closed); the others are killed at once.
        if !matches!(why, Why::Died)
            || tokio::time::timeout(Duration::from_secs(2), proc.wait())
                .await
                .is_err()
        {
            proc.kill();
        }
    }
    // A worker that ran its exit function leaves by itself; do not wait forever.
    let exit = match tokio::time::timeout(Duration::from_secs(10), proc.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            proc.kill();
            proc.wait().await
        }
    };
    relayed(relays).await;
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
        Why::Retiring(_) => unreachable!("a retiring worker is not finished here"),
        Why::Stopped => Ended::Stopped,
        Why::Cancelled => {
            core.ended(
                slot,
                RestartCause::Cancelled,
                "killed: a task of a dropped call".into(),
            );
            // It ran a job of a cancelled call: nobody reads this error.
            core.settle(slot, journal, Cause::Task(Error::closed()), true);
            Ended::Died
        }
        Why::Broken(m) => {
            core.ended(slot, RestartCause::Protocol, format!("killed: {m}"));
            let e = Error::new(Kind::Protocol(m));
            core.settle(slot, journal, Cause::Task(e), false);
            Ended::Died
        }
        // A remote worker (it has no journal for the pool's watchdog) stops itself when a task
        // with a deadline runs past it, and says so.
        Why::StoppedItself => {
            core.ended(
                slot,
                RestartCause::Timeout,
                "stopped itself: a task past its deadline".into(),
            );
            let now = crate::proto::deadline::now_us();
            core.settle(slot, journal, Cause::TimedOut { deadline_us: now }, true);
            Ended::Died
        }
        Why::Died => {
            let used = proc.used();
            let how = match &used {
                Some(used) => format!("{exit}, {}", describe_used(used)),
                None => exit.to_string(),
            };
            core.ended(slot, RestartCause::Died, how);
            let died = Error::died(exit, Stage::Task).with_used(used);
            core.settle(slot, journal, Cause::Task(died), true);
            Ended::Died
        }
        Why::TimedOut(word) => {
            core.ended(
                slot,
                RestartCause::Timeout,
                "killed: a task past its deadline".into(),
            );
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

    /// News from worker `slot`: a nested pool's progress goes to the bars, a slow task to the
    /// insights; task starts and output lines (which the pool reads from the worker's own
    /// streams) are dropped.
    fn heard(&self, slot: usize, event: Event) {
        match event {
            Event::Progress { .. } => {
                let running = self
                    .state()
                    .queue
                    .running(slot)
                    .map(|j| j.call.progress.clone());
                crate::observe::progress::heard(&self.observer, slot, running, event);
            }
            Event::Slow {
                id,
                index,
                ns,
                cpu_ns,
                peak_memory,
                input,
            } => {
                let Some(insights) = &self.observer.insights else {
                    return;
                };
                let first = {
                    let st = self.state();
                    st.queue
                        .in_flight(slot)
                        .find(|j| j.id == id)
                        .map(|j| j.first)
                };
                if let Some(first) = first {
                    insights.slow(crate::observe::SlowTask {
                        duration: Duration::from_nanos(ns),
                        worker: slot,
                        index: first + index as usize,
                        input: Some(input).filter(|i| !i.is_empty()),
                        cpu: cpu_ns.map(Duration::from_nanos),
                        peak_memory,
                    });
                }
            }
            Event::Started { .. } | Event::Output { .. } => {}
        }
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
            job.worked(Duration::from_nanos(b.busy_ns));
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
                self.landed(&job);
                job.into_call()
            }
            Some(Err(call)) => call,
            None => return Err("the job is gone".into()),
        };
        let values = b.values as usize;
        let busy = Duration::from_nanos(b.busy_ns);
        self.worked(slot, tasks, busy, Duration::from_nanos(b.cpu_ns));
        if values > 0 {
            let bytes = held.as_deref().unwrap_or(inline);
            deliver_values(&call, first, values, bytes, slot, busy);
        }
        drop(held);
        if let Some(failure) = failure {
            let e = Error::failed(*failure, Stage::Task).with_worker(slot);
            call.deliver_failure(first + values, 1, Some(slot), e);
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
}
