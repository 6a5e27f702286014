//! `Threading`: one dedicated thread per worker.
//!
//! Dedicated threads rather than `spawn_blocking`: a worker owns its state for its whole life
//! (`worker_init` runs once, `worker_exit` at shutdown), and tokio's blocking pool would hand
//! consecutive chunks to different threads and retire idle ones. A thread worker takes its jobs
//! from the pool's queue itself and delivers results straight to their calls: a task costs two
//! thread hand-offs (to the worker and back), not four.

use std::sync::Arc;

use super::{BoxFuture, Link, Pool, Spec, Start};
use crate::error::Error;
use crate::worker::{ThreadWorker, Watch};

pub(crate) struct Threading;

impl Start for Threading {
    fn launch<'a>(
        &'a self,
        id: usize,
        spec: &'a Spec,
        pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Link, Error>> {
        Box::pin(async move {
            let (ready_tx, ready) = match spec.init {
                true => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    (Some(tx), Some(rx))
                }
                false => (None, None),
            };
            let (ended_tx, ended) = tokio::sync::oneshot::channel();
            let watch = Arc::new(Watch::new(spec.epoch_us));
            let worker = ThreadWorker {
                id,
                lifespan: spec.lifespan,
                insights: spec.insights,
                shared: spec.shared.clone(),
                setup: spec.setup.ptr,
                exit: spec.exit.map(|e| e.ptr),
                queue: pool.clone(),
                watch: watch.clone(),
                ready: ready_tx,
                ended: ended_tx,
            };
            let cpus = spec.cpus.get(id).cloned();
            std::thread::Builder::new()
                .name(format!("ampire-worker-{id}"))
                .spawn(move || {
                    // A thread pins itself; a thread that cannot is not a worker (the pool
                    // starts another).
                    if cpus.is_none_or(|c| crate::cpus::pin(0, &c).is_ok()) {
                        worker.run()
                    }
                })
                .map_err(|e| Error::start_io("could not start a thread", e))?;
            Ok(Link::Thread {
                ready,
                ended,
                watch,
            })
        })
    }
}
