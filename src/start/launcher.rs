//! The launcher: one long-lived thread per process that starts every child process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created a child exits, not the process. tokio
//! retires idle blocking threads, and a worker thread can leave the runtime's pool after
//! `block_in_place`; a child created there would be killed at a random moment. So all forks, spawns
//! and reaping happen on this thread, which lives as long as the process.

use std::sync::mpsc;

use crate::role::ProcessLocal;

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
