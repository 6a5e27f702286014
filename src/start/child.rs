//! A worker process that is a child of this process (`Fork` and `Spawn`): watched through its
//! pidfd, killed through it, reaped with `wait4` (which says what it used); and the pidfd every
//! worker is killed through.

use std::os::fd::OwnedFd;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{BoxFuture, Process, launcher};
use crate::error::{Exit, Used};
use crate::sys;
use crate::sys::reap::{self, Status};

/// A pidfd registered with the reactor: it kills its process without a pid-reuse race, and becomes
/// readable when the process ends.
pub(crate) struct Pidfd(AsyncFd<OwnedFd>);

impl Pidfd {
    pub(crate) fn new(pidfd: OwnedFd) -> std::io::Result<Pidfd> {
        sys::fd::register(pidfd, Interest::READABLE).map(Pidfd)
    }

    /// Sends SIGKILL; harmless if the process already ended.
    pub(crate) fn kill(&self) {
        let _ = sys::fd::pidfd_send_signal(self.0.get_ref(), libc::SIGKILL);
    }
}

/// A child of this process, watched through its pidfd and reaped with `wait4(pid)`.
pub(crate) struct Child {
    pid: Pid,
    pidfd: Pidfd,
    exit: Option<Exit>,
    used: Option<Used>,
}

/// A status as errors tell it.
pub(crate) fn to_exit(status: Status) -> Exit {
    match status {
        Status::Code(code) => Exit::Code(code),
        Status::Signal(sig) => Exit::Signal(sig),
    }
}

impl Child {
    /// Takes charge of child `pid`, not yet reaped, and its pidfd.
    pub(crate) fn new(pid: Pid, pidfd: OwnedFd) -> std::io::Result<Child> {
        Ok(Child {
            pid,
            pidfd: Pidfd::new(pidfd)?,
            exit: None,
            used: None,
        })
    }
}

impl Process for Child {
    fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    fn kill(&mut self) {
        if self.exit.is_none() {
            self.pidfd.kill();
        }
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            while self.exit.is_none() {
                let Ok(mut guard) = self.pidfd.0.readable().await else {
                    self.exit = Some(Exit::Unknown);
                    break;
                };
                match reap::wait4(Some(self.pid.as_raw()), false) {
                    Ok(Some((_, status, used))) => {
                        self.exit = Some(to_exit(status));
                        self.used = Some(used);
                    }
                    Ok(None) => guard.clear_ready(),
                    Err(_) => self.exit = Some(Exit::Unknown),
                }
            }
            self.exit.unwrap_or(Exit::Unknown)
        })
    }

    fn used(&self) -> Option<Used> {
        self.used
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
            let pid = self.pid;
            // Reap on the launcher thread: after SIGKILL this returns as soon as the kernel has
            // torn the process down, and no zombie stays behind.
            let _ = launcher::submit(move || {
                let _ = waitpid(pid, None);
            });
        }
    }
}
