//! The launcher: one long-lived thread per process that starts every child process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created a child exits, not the process. tokio
//! retires idle blocking threads, and a worker thread can leave the runtime's pool after
//! `block_in_place`; a child created there would be killed at a random moment. So all forks, spawns
//! and reaping happen on this thread, which lives as long as the process.

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::sync::mpsc;

use crate::sys;
use crate::sys::local::ProcessLocal;

/// The environment variable that tells a re-executed child which role to take.
pub(crate) const ROLE_VAR: &str = "AMPIRE_ROLE";
pub(crate) const ROLE_WORKER: &str = "worker";
pub(crate) const ROLE_SERVER: &str = "forkserver";
/// The pid of the process that started a re-executed child, which the child checks is its parent.
pub(crate) const PARENT_VAR: &str = "AMPIRE_PARENT";

type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER: ProcessLocal<mpsc::Sender<Job>> = ProcessLocal::new();

/// Runs `f` on the launcher thread and returns its result.
pub(crate) async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(move || {
        let _ = tx.send(f());
    })?;
    rx.await
        .map_err(|_| std::io::Error::other("the launcher thread stopped"))
}

/// Queues `f` on the launcher thread without waiting for it.
pub(crate) fn submit(f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let sender = LAUNCHER.get_or_try_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ampire-launcher".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok::<_, std::io::Error>(tx)
    })?;
    sender
        .send(Box::new(f))
        .map_err(|_| std::io::Error::other("the launcher thread stopped"))
}

/// Makes this new child die with the thread that created it (`PR_SET_PDEATHSIG = SIGKILL`), as
/// every child of ours does. `false` if it cannot, or if `parent` already died and the child
/// was handed to another process: such a child must not run at all.
pub(crate) fn dies_with(parent: u32) -> bool {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_ok()
        && nix::unistd::getppid().as_raw() as u32 == parent
}

/// Re-executes this binary (from the launcher thread) in `role`, with `fds[i]` as its
/// descriptor `3 + i`; returns the child's pid.
pub(crate) fn spawn_self(role: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<i32> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != ROLE_VAR && k != PARENT_VAR)
        .collect();
    env.push((ROLE_VAR.into(), role.into()));
    env.push((PARENT_VAR.into(), std::process::id().to_string().into()));
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "ampire".into());
    sys::spawn::spawn_self(argv0, env, fds)
}
