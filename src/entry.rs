//! The role switch: a process started by the pool as a worker or a forkserver takes that role
//! here, before `main` runs, and never returns.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::start::launcher::{self, PARENT_VAR, ROLE_SERVER, ROLE_VAR, ROLE_WORKER};
use crate::start::remote::ROLE_REMOTE;
use crate::sys;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

// The role switch runs before `main`; `keep()` makes sure the linker keeps it.
sys::ctor::before_main!(divert_if_child);

/// Records that `init()` ran in this process (or in the process this one was forked from).
pub(crate) fn mark_initialized() {
    INITIALIZED.store(true, Ordering::SeqCst);
}

/// Whether `init()` ran in this process (or in the process this one was forked from).
pub(crate) fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// Whether this process was started as a child of ours but was not diverted into its role.
pub(crate) fn undiverted_child() -> bool {
    std::env::var_os(ROLE_VAR).is_some()
}

/// Takes the role named by `AMPIRE_ROLE`, if any, and never returns in that case.
pub(crate) fn divert_if_child() {
    let Some(role) = std::env::var_os(ROLE_VAR) else {
        return;
    };
    let parent = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    sys::fork::remove_env_single_threaded(ROLE_VAR);
    sys::fork::remove_env_single_threaded(PARENT_VAR);
    // A worker on another host has no parent of ours: it lives as long as its link.
    let remote = role.to_str() == Some(ROLE_REMOTE);
    if !remote && !parent.is_some_and(launcher::dies_with) {
        sys::fork::exit_now(1);
    }
    mark_initialized();
    sys::fd::ignore_sigpipe();
    if remote {
        let code = std::panic::catch_unwind(remote_worker).unwrap_or(101);
        sys::fork::exit_now(code);
    }
    let code = std::panic::catch_unwind(|| match role.to_str() {
        Some(ROLE_WORKER) => match [3, 4, 5, 6, 7, 8].map(sys::fd::adopt) {
            [Some(tasks), Some(results), arena, journal, out, err] => {
                let ends = crate::worker::Ends {
                    tasks,
                    results,
                    arena,
                    journal,
                    output: out.zip(err).map(|(o, e)| [o, e]),
                };
                crate::worker::serve(ends, None)
            }
            _ => 2,
        },
        Some(ROLE_SERVER) => match sys::fd::adopt(3) {
            Some(ctl) => crate::start::forkserver::serve(ctl),
            None => 2,
        },
        _ => 2,
    })
    .unwrap_or(101);
    sys::fork::exit_now(code)
}

/// A worker started on another host by a launcher: its link is its stdin and stdout. They move
/// to descriptors of their own (stdin becomes `/dev/null`, stdout the stderr, so that what a
/// task prints cannot break a frame), and the worker leaves as soon as the link closes, even in
/// the middle of a task.
fn remote_worker() -> i32 {
    let Ok((tasks, results)) = sys::fd::take_stdio_link() else {
        return 2;
    };
    if sys::fd::exit_when_closed(&tasks, &results, crate::worker::leaving).is_err()
        || crate::worker::watch_own_deadline().is_err()
    {
        return 2;
    }
    let ends = crate::worker::Ends {
        tasks,
        results,
        arena: None,
        journal: None,
        output: None,
    };
    crate::worker::serve(ends, None)
}
