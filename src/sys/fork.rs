//! `fork(2)` and the rules of the child's branch.

use std::io::{self, Write};

use nix::unistd::{ForkResult, Pid};

/// Forks the calling thread. In the child, `child` runs and the process leaves through `_exit`;
/// it never returns into the caller's frames, never unwinds and never runs a destructor of
/// inherited state.
///
/// The standard streams' locks are taken before the fork and released on both sides after it,
/// so a child never inherits a stdout or stderr lock that another thread held at that moment
/// (the lock then belongs to this very thread, whose copy is the child's only thread).
///
/// `held` is any other set of lock guards the caller took for the same reason; it is released on
/// both sides after the fork, like the streams' locks.
pub(crate) fn fork_with<G>(held: G, child: impl FnOnce() -> i32) -> io::Result<Pid> {
    let out = io::stdout();
    let err = io::stderr();
    let mut out_guard = out.lock();
    let _ = out_guard.flush();
    let err_guard = err.lock();
    // SAFETY: in the child only the calling thread exists. The child branch below does not return
    // into the caller: it runs `child` inside `catch_unwind`, then `_exit`s, so no inherited
    // destructor runs and no unwinding crosses into frames that assume other threads exist. The
    // caller documents which locks the child may touch (see `start/fork.rs`): glibc resets its
    // malloc and stdio locks in the child, and the Rust stdout/stderr locks are held by this thread
    // across the call.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(held);
            drop(err_guard);
            drop(out_guard);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
            exit_now(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(held);
            Ok(child)
        }
        Err(e) => Err(e.into()),
    }
}

/// Leaves the process at once: no atexit handlers, no destructors, no stdio flush beyond ours.
pub(crate) fn exit_now(code: i32) -> ! {
    let _ = io::stdout().flush();
    // SAFETY: `_exit` is async-signal-safe and always sound to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Whether the process has exactly one thread, read from `/proc/self/stat`.
pub(crate) fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    // Field 20 (num_threads); the command name in field 2 may hold spaces, so skip past ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .is_some_and(|n| n == "1")
}

/// Removes an environment variable while the process is still single-threaded.
pub(crate) fn remove_env_single_threaded(key: &str) {
    // SAFETY: called only during role diversion, before `main` (or first thing in `init()`), when
    // no other thread of this process exists that could read the environment concurrently.
    unsafe { std::env::remove_var(key) };
}
