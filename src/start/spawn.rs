//! `Spawn`: a fresh run of this binary (`/proc/self/exe`) that takes the worker role before
//! `main`, driven by `tokio::process`.
//!
//! `tokio::process` rather than `async-process`: it reaps through a pidfd inside the runtime the
//! pool already uses, with no extra reactor or reaper thread and tokio-native handles.

use std::os::fd::AsRawFd;
use std::process::Stdio;

use super::{BoxFuture, Link, Pipes, Pool, Process, Spec, Start, launcher};
use crate::error::{Error, Exit};
use crate::role::{ROLE_VAR, ROLE_WORKER};
use crate::sys;

pub(crate) struct Spawn;

impl Start for Spawn {
    fn launch<'a>(
        &'a self,
        _id: usize,
        spec: &'a Spec,
        _pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Link, Error>> {
        Box::pin(async move {
            let Pipes {
                tasks_w,
                results_r,
                tasks_r,
                results_w,
                arena,
            } = Pipes::new(spec).map_err(Error::start)?;
            let handle = tokio::runtime::Handle::current();
            let child = launcher::run(move || {
                let _runtime = handle.enter();
                let mut cmd = tokio::process::Command::new("/proc/self/exe");
                cmd.env(ROLE_VAR, ROLE_WORKER)
                    .stdin(Stdio::null())
                    .kill_on_drop(true);
                if let Some(arg0) = std::env::args_os().next() {
                    cmd.arg0(arg0);
                }
                let fds = [
                    tasks_r.as_raw_fd(),
                    results_w.as_raw_fd(),
                    arena.as_raw_fd(),
                ];
                sys::fd::prepare_child(cmd.as_std_mut(), fds, std::process::id() as i32);
                let child = cmd.spawn();
                // The child has its copies now; ours must close so that EOF can reach each side.
                drop((tasks_r, results_w, arena));
                child
            })
            .await
            .and_then(|r| r)
            .map_err(|e| Error::start(format!("could not spawn /proc/self/exe: {e}")))?;
            let (tasks, results) = Pipes::into_parent(tasks_w, results_r).map_err(Error::start)?;
            Ok(Link::Process {
                tasks,
                results,
                proc: Box::new(Spawned(child)),
                inherits: false,
            })
        })
    }
}

struct Spawned(tokio::process::Child);

impl Process for Spawned {
    fn pid(&self) -> u32 {
        self.0.id().unwrap_or(0)
    }

    fn kill(&mut self) {
        let _ = self.0.start_kill();
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            use std::os::unix::process::ExitStatusExt;
            match self.0.wait().await {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (_, Some(s)) => Exit::Signal(s),
                    _ => Exit::Unknown,
                },
                Err(_) => Exit::Unknown,
            }
        })
    }
}
