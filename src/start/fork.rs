//! `Fork`: a copy-on-write copy of this process, forked from the launcher thread.
//!
//! The child is a copy of the launcher thread alone. It never touches tokio (its loop is blocking
//! I/O on two pipes), never returns into the launcher's frames, never drops inherited state and
//! leaves through `_exit`. The standard streams' locks are held across the fork (see
//! `sys::fork::fork_with`), and glibc resets its allocator locks in the child, so printing and
//! allocating are safe.
//!
//! **The remaining hazard**, as CPython documents for its `fork` method: any *other* lock that
//! another thread of the pool owner held at the moment of the fork stays locked forever in the
//! child (a `Mutex` of your own, a logger's, a C library's). A task that takes such a lock in a
//! `Fork` worker deadlocks. `Forkserver` workers are forked from a process that has only one
//! thread and do not have this problem; prefer it unless you need copy-on-write sharing of data
//! built after start-up.

use std::any::Any;
use std::sync::{Arc, PoisonError};

use super::child::Child;
use super::link::{self, ChildEnds};
use super::{BoxFuture, Link, Pool, Spec, Start, launcher};
use crate::error::Error;
use crate::sys;

pub(crate) struct Fork;

impl Start for Fork {
    fn launch<'a>(
        &'a self,
        id: usize,
        spec: &'a Spec,
        _pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Link, Error>> {
        let shared: Arc<dyn Any + Send + Sync> = spec.shared.clone();
        Box::pin(link::local(
            spec,
            id,
            true,
            move |ends: ChildEnds| async move {
                let parent = std::process::id();
                let (pid, pidfd) = launcher::run(move || {
                    // Everything lazily initialised that the child will use is initialised now, on
                    // this thread: a `Once` that another thread was running at the moment of the fork
                    // would stay "running" in the child forever.
                    crate::worker::prepare_fork();
                    // No thread of ours may be capturing a backtrace (std's global lock) as we fork.
                    let held = crate::worker::capture_lock()
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    let pid = sys::fork::fork_with(held, move || {
                        for fd in ends.parents {
                            sys::fd::close_inherited(fd);
                        }
                        if !launcher::dies_with(parent) {
                            return 1;
                        }
                        crate::worker::serve(ends.into_worker(), Some(shared))
                    })?;
                    let pidfd = sys::fd::pidfd_open(pid.as_raw())?;
                    Ok::<_, std::io::Error>((pid, pidfd))
                })
                .await
                .and_then(|r| r)
                .map_err(|e| Error::start_io("could not fork", e))?;
                let child = Child::new(pid, pidfd)
                    .map_err(|e| Error::start_io("could not watch the worker", e))?;
                Ok(Box::new(child) as _)
            },
        ))
    }
}
