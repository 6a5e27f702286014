//! The loop of a thread worker: it takes its jobs from the pool's queue itself and hands each
//! result straight to its call.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::catch::install_panic_hook;
use super::{Context, Exited, SetupCall, run_exit};
use crate::proto::Failure;
use crate::sys::image::EntryFn;

/// A chunk for a thread worker: the inputs are moved, never serialised. The closure returns a
/// boxed `ChunkOut<R>` of its call's result type.
pub(crate) type LocalChunk =
    Box<dyn FnOnce(&mut Context) -> Result<Box<dyn Any + Send>, String> + Send>;

/// What a thread worker does next.
pub(crate) enum LocalNext {
    Job(u64, LocalChunk),
    /// Run the exit function and leave.
    Shutdown,
    /// Leave at once (the pool was dropped).
    Stop,
}

/// The pool as a thread worker sees it: it takes its jobs from the queue itself and hands the
/// results straight to their calls, with no task in between.
pub(crate) trait LocalQueue: Send + Sync {
    /// Blocks until there is something to do.
    fn next(&self, slot: usize) -> LocalNext;
    /// Job `id` finished with `out`. Hands back the next job when one is ready at once, so
    /// that a busy worker takes the pool's lock once per job, not twice.
    fn done(
        &self,
        slot: usize,
        id: u64,
        out: Result<Box<dyn Any + Send>, String>,
        busy: Duration,
    ) -> Option<(u64, LocalChunk)>;
    /// The worker ran its exit function and dropped its state; this is its exit result.
    fn left(&self, slot: usize, exit: Result<Exited, Failure>);
}

/// How a thread worker ended: `true` after shutdown (its exit result went to
/// [`LocalQueue::left`]), `false` when stopped.
pub(crate) type ThreadEnd = bool;

/// The loop of a thread worker.
pub(crate) struct ThreadWorker {
    pub id: usize,
    pub shared: Arc<dyn Any + Send + Sync>,
    pub setup: EntryFn,
    pub exit: Option<EntryFn>,
    pub queue: Arc<dyn LocalQueue>,
    /// Where set-up reports, when the pool waits for it.
    pub ready: Option<tokio::sync::oneshot::Sender<Result<(), Failure>>>,
    pub ended: tokio::sync::oneshot::Sender<ThreadEnd>,
}

impl ThreadWorker {
    pub(crate) fn run(self) {
        install_panic_hook();
        let mut cx = Context {
            id: self.id,
            shared: Some(self.shared),
            state: None,
        };
        let mut call = SetupCall::new(false);
        (self.setup)(&mut cx, &[], &mut call);
        let setup = call.result;
        let failed = setup.is_err();
        // Without a waiting pool (no `worker_init`), a failed set-up just ends the thread, and
        // the pool replaces it.
        let heard = self.ready.is_none_or(|r| r.send(setup).is_ok());
        if !heard || failed {
            return;
        }
        let mut ready = None;
        loop {
            let next = match ready.take() {
                Some((job, chunk)) => LocalNext::Job(job, chunk),
                None => self.queue.next(self.id),
            };
            match next {
                LocalNext::Job(job, chunk) => {
                    let t0 = Instant::now();
                    let out = chunk(&mut cx);
                    ready = self.queue.done(self.id, job, out, t0.elapsed());
                }
                LocalNext::Shutdown => {
                    let none = || Ok(Exited::Bytes(Vec::new()));
                    let result = self.exit.map_or_else(none, |f| run_exit(f, &mut cx, true));
                    self.queue.left(self.id, result);
                    let _ = self.ended.send(true);
                    // The state is dropped here, on this thread, after `shutdown()` was told.
                    return;
                }
                LocalNext::Stop => {
                    let _ = self.ended.send(false);
                    return;
                }
            }
        }
    }
}
