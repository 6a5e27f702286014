//! A worker process that is a child of this process (`Fork` and `Spawn`): watched through its
//! pidfd, killed through it, reaped with `waitpid`; and the pidfd every worker is killed through.

use std::os::fd::OwnedFd;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{BoxFuture, Process, launcher};
use crate::error::Exit;
use crate::sys;

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

/// A child of this process, watched through its pidfd and reaped with `waitpid(pid)`.
pub(crate) struct Child {
    pid: Pid,
    pidfd: Pidfd,
    exit: Option<Exit>,
}

fn to_exit(status: WaitStatus) -> Option<Exit> {
    match status {
        WaitStatus::Exited(_, code) => Some(Exit::Code(code)),
        WaitStatus::Signaled(_, sig, _) => Some(Exit::Signal(sig as i32)),
        WaitStatus::StillAlive => None,
        _ => None,
    }
}

impl Child {
    /// Takes charge of child `pid`, not yet reaped, and its pidfd.
    pub(crate) fn new(pid: Pid, pidfd: OwnedFd) -> std::io::Result<Child> {
        Ok(Child {
            pid,
            pidfd: Pidfd::new(pidfd)?,
            exit: None,
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
                match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(status) => match to_exit(status) {
                        Some(exit) => self.exit = Some(exit),
                        None => guard.clear_ready(),
                    },
                    Err(_) => self.exit = Some(Exit::Unknown),
                }
            }
            self.exit.unwrap_or(Exit::Unknown)
        })
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
