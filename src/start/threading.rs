//! `Threading`: one dedicated thread per worker.
//!
//! Dedicated threads rather than `spawn_blocking`: a worker owns its state for its whole life
//! (`worker_init` runs once, `worker_exit` at shutdown), and tokio's blocking pool would hand
//! consecutive chunks to different threads and retire idle ones.

use super::{BoxFuture, Link, Spec, Start};
use crate::error::Error;
use crate::worker;

pub(crate) struct Threading;

impl Start for Threading {
    fn launch<'a>(&'a self, id: usize, spec: &'a Spec) -> BoxFuture<'a, Result<Link, Error>> {
        Box::pin(async move {
            let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
            let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
            let shared = spec.shared.clone();
            let setup = spec.setup.ptr;
            std::thread::Builder::new()
                .name(format!("ampire-worker-{id}"))
                .spawn(move || worker::serve_thread(id, shared, setup, jobs_rx, events_tx))
                .map_err(Error::start)?;
            Ok(Link::Thread {
                jobs: jobs_tx,
                events: events_rx,
            })
        })
    }
}
