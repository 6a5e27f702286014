//! `ampire::init()`.

use std::sync::Once;

use crate::{entry, sys};

/// Prepares this process for process start methods. Call it as the first line of `main`.
///
/// - In a child started by the `Spawn` method (or a re-executed forkserver) it takes that role
///   and never returns. (A life-before-main hook of the crate normally does this even earlier,
///   before `main` and before a test harness runs; `init` is the safety net.)
/// - In the pool owner, while the process is still single-threaded, it forks the forkserver: a
///   small single-threaded process that later forks `Forkserver` workers. If threads already
///   exist (for example in a `cargo test` binary), the forkserver is started on first use by
///   re-executing the binary instead, which is safe from any thread.
///
/// Calling it more than once is harmless. Pools with a process start method fail to build
/// without it ([`Error::is_config`](crate::Error::is_config)); `Threading` pools do not need it.
///
/// # Examples
///
/// ```no_run
/// // The first statement of a synchronous `main`, before the tokio runtime exists:
/// ampire::init();
/// let runtime = tokio::runtime::Runtime::new().unwrap();
/// ```
pub fn init() {
    crate::entry::keep();
    entry::divert_if_child();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        entry::mark_initialized();
        if sys::fork::single_threaded() {
            // A failure is not fatal: the forkserver is then started on first use.
            let _ = crate::start::forkserver::start_early();
        }
        // What every pool needs later, ready before the first one is built.
        crate::worker::prepare_fork();
        let _ = crate::start::launcher::submit(|| {});
    });
}
