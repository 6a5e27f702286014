//! `Spawn`: a fresh run of this binary (`/proc/self/exe`) that takes the worker role before
//! `main`.
//!
//! Started with `posix_spawn` from the launcher thread (see `sys/spawn.rs`): the owner's memory
//! is neither copied nor made copy-on-write for a child that is about to `exec`, so a large owner
//! starts workers as fast as a small one. The child then dies with the launcher thread like every
//! worker (see `launcher::dies_with`), and is watched and reaped through a pidfd like a `Fork` child.

use super::child::Child;
use super::link::{self, ChildEnds};
use super::{BoxFuture, Link, Pool, Spec, Start, launcher};
use crate::error::Error;
use crate::sys;

pub(crate) struct Spawn;

impl Start for Spawn {
    fn launch<'a>(
        &'a self,
        id: usize,
        spec: &'a Spec,
        _pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Link, Error>> {
        Box::pin(link::local(spec, id, false, |ends: ChildEnds| async move {
            let (pid, pidfd) = launcher::run(move || {
                let pid = launcher::spawn_self(launcher::ROLE_WORKER, &ends.fds())?;
                // The child has its copies now; ours close when this returns, so that EOF can
                // reach each side.
                let pidfd = sys::fd::pidfd_open(pid)?;
                Ok::<_, std::io::Error>((nix::unistd::Pid::from_raw(pid), pidfd))
            })
            .await
            .and_then(|r| r)
            .map_err(|e| Error::start_io("could not spawn /proc/self/exe", e))?;
            let child = Child::new(pid, pidfd)
                .map_err(|e| Error::start_io("could not watch the worker", e))?;
            Ok(Box::new(child) as _)
        }))
    }
}
