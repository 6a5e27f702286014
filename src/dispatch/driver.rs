//! The driver of one process worker: a *writer* task that feeds it jobs and a *driver* that
//! reads its results, notices its end and says how it ended. Reading and writing are separate
//! tasks so a worker blocked on writing a large result never deadlocks against us writing a large
//! input.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Core;
use super::job::decode;
use super::queue::Outgoing;
use crate::error::{Error, Exit, Kind, Stage};
use crate::proto::body::ARENA_MIN;
use crate::proto::frame;
use crate::proto::{Body, Failure, FromWorker, ToWorker};
use crate::start::{Connected, Process, Rx, Tx};
use crate::task::Entry;

/// How one worker's life ended.
pub(super) enum Ended {
    /// It ran its exit function and left.
    Done,
    /// It died or was killed; replace it.
    Died,
    /// The pool was dropped.
    Stopped,
}

enum Why {
    Exit(Result<Vec<u8>, Failure>),
    Died,
    Broken(String),
    Cancelled,
    Stopped,
}

enum Event {
    /// Job `id`'s serialised results are `rx.body(body)`, until the next read.
    Done {
        id: u64,
        body: std::ops::Range<usize>,
        busy: Duration,
    },
    Exit(Result<Vec<u8>, Failure>),
    Eof,
    Broken(String),
}

/// The next event of a process worker. Cancel-safe: each await is one read.
async fn event(rx: &mut Rx) -> Event {
    match rx.next::<FromWorker>().await {
        Ok(Some(frame)) => match frame.header {
            FromWorker::Done { id, busy_ns } => Event::Done {
                id,
                body: frame.body,
                busy: Duration::from_nanos(busy_ns),
            },
            FromWorker::Exit(None) => Event::Exit(Ok(rx.body(frame.body).to_vec())),
            FromWorker::Exit(Some(fail)) => Event::Exit(Err(fail)),
            FromWorker::Fatal(m) => Event::Broken(m),
            other => Event::Broken(format!("unexpected message {other:?}")),
        },
        Ok(None) => Event::Eof,
        Err(e) => Event::Broken(e.to_string()),
    }
}

impl Tx {
    async fn send_jobs(&mut self, jobs: Vec<(u64, Outgoing)>) -> std::io::Result<()> {
        let Tx { io, buf } = self;
        buf.clear();
        for (id, job) in jobs {
            let Outgoing::Remote {
                entry,
                count,
                span,
                inline,
            } = job
            else {
                continue;
            };
            let header = ToWorker::Task {
                id,
                entry,
                count,
                arena: span,
            };
            let inline = inline.as_deref().map_or(&[][..], Body::inline);
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

async fn write_loop(core: Arc<Core>, slot: usize, mut tx: Tx) {
    loop {
        let batch = match core.next_jobs(slot).await {
            Next::Jobs(batch) => batch,
            Next::Shutdown => {
                let _ = tx.send_shutdown(core.spec.exit).await;
                // Keep the channel open until the worker has answered.
                std::future::pending::<()>().await;
                return;
            }
            Next::Stop => return,
        };
        if tx.send_jobs(batch).await.is_err() {
            return; // the driver sees the worker's end
        }
    }
}

/// Serves one incarnation of a worker until it leaves.
pub(super) async fn serve(core: &Arc<Core>, slot: usize, conn: Connected) -> Ended {
    core.state().pids[slot] = conn.pid();
    match conn {
        Connected::Thread { ended } => serve_thread(core, slot, ended).await,
        Connected::Process { tx, rx, proc } => serve_process(core, slot, tx, rx, proc).await,
    }
}

/// A thread worker runs by itself (see `ThreadWorker`); wait for it to leave.
async fn serve_thread(
    core: &Arc<Core>,
    slot: usize,
    ended: tokio::sync::oneshot::Receiver<crate::worker::ThreadEnd>,
) -> Ended {
    match ended.await {
        Ok(true) => Ended::Done,
        Ok(false) => Ended::Stopped,
        Err(_) => {
            // The thread ended without saying so: something outside a task panicked.
            core.fail_inflight(
                slot,
                Error::new(Kind::WorkerDied {
                    exit: Exit::Unknown,
                    during: Stage::Task,
                }),
            );
            Ended::Died
        }
    }
}

async fn serve_process(
    core: &Arc<Core>,
    slot: usize,
    tx: Tx,
    mut rx: Rx,
    mut proc: Box<dyn Process>,
) -> Ended {
    let writer = tokio::spawn(write_loop(core.clone(), slot, tx));
    let why = {
        let mut exited = std::pin::pin!(proc.wait());
        'events: loop {
            let stop = core.stop.notified();
            if core.is_stopped() {
                break 'events Why::Stopped;
            }
            tokio::select! {
                biased;
                _ = stop => break 'events Why::Stopped,
                ev = event(&mut rx) => match ev {
                    Event::Done { id, body, busy } => {
                        let bytes = rx.body(body);
                        if let Err(e) = core.complete(slot, id, |job| decode(job, slot, bytes), busy) {
                            break 'events Why::Broken(e.to_string());
                        }
                    }
                    Event::Exit(r) => break 'events Why::Exit(r),
                    Event::Eof => break 'events Why::Died,
                    Event::Broken(m) => break 'events Why::Broken(m),
                },
                _ = core.kill[slot].notified() => {
                    if core.running_cancelled(slot) {
                        break 'events Why::Cancelled;
                    }
                }
                _ = &mut exited => {
                    // Read what the worker wrote before it ended, then treat it as dead.
                    loop {
                        match tokio::time::timeout(Duration::from_millis(200), event(&mut rx)).await {
                            Ok(Event::Done { id, body, busy }) => {
                                let bytes = rx.body(body);
                                let _ = core.complete(slot, id, |job| decode(job, slot, bytes), busy);
                            }
                            Ok(Event::Exit(r)) => break 'events Why::Exit(r),
                            _ => break 'events Why::Died,
                        }
                    }
                }
            }
        }
    };
    finish(core, slot, writer, proc, why).await
}

async fn finish(
    core: &Arc<Core>,
    slot: usize,
    writer: JoinHandle<()>,
    mut proc: Box<dyn Process>,
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
    core.state().pids[slot] = None;
    match why {
        Why::Exit(r) => core.store_exit(slot, r),
        Why::Stopped => Ended::Stopped,
        Why::Cancelled => {
            // The job it ran belongs to a cancelled call: nobody reads this error.
            core.fail_inflight(slot, Error::closed());
            Ended::Died
        }
        Why::Broken(m) => {
            core.fail_inflight(slot, Error::new(Kind::Protocol(m)));
            Ended::Died
        }
        Why::Died => {
            core.fail_inflight(
                slot,
                Error::new(Kind::WorkerDied {
                    exit,
                    during: Stage::Task,
                }),
            );
            Ended::Died
        }
    }
}

/// What a writer does next.
enum Next {
    Jobs(Vec<(u64, Outgoing)>),
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
                if !batch.is_empty() {
                    return Next::Jobs(batch);
                }
                if st.closing && st.queue.drained(slot) {
                    return Next::Shutdown;
                }
            }
            notified.await;
        }
    }

    /// Job `id`, the oldest in flight on process worker `slot`, is done: its window has room
    /// again, then `outcome` makes its result (decoded only now, after the writer was told, with
    /// the decoder of the job's call).
    fn complete(
        &self,
        slot: usize,
        id: u64,
        outcome: impl FnOnce(&super::Job) -> super::Outcome,
        busy: Duration,
    ) -> Result<(), Error> {
        let job =
            self.state().queue.land(slot, id).ok_or_else(|| {
                Error::new(Kind::Protocol(format!("result for unknown job {id}")))
            })?;
        // A writer's window has room again (or, when closing, it may now send the shutdown).
        self.wake[slot].notify_one();
        super::job::deliver(job, Some(slot), outcome, busy);
        Ok(())
    }
}
