//! `ampire::init()`, the roles a process can take, and process-local globals.

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use crate::sys;

/// The environment variable that tells a re-executed child which role to take.
pub(crate) const ROLE_VAR: &str = "AMPIRE_ROLE";
pub(crate) const ROLE_WORKER: &str = "worker";
pub(crate) const ROLE_SERVER: &str = "forkserver";
/// The pid of the process that started a re-executed child, which the child checks is its parent.
const PARENT_VAR: &str = "AMPIRE_PARENT";

static INITIALIZED: AtomicBool = AtomicBool::new(false);

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
    sys::ctor::keep();
    divert_if_child();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        INITIALIZED.store(true, Ordering::SeqCst);
        if sys::fork::single_threaded() {
            // A failure is not fatal: the forkserver is then started on first use.
            let _ = crate::start::forkserver::start_early();
        }
        // What every pool needs later, ready before the first one is built.
        crate::worker::prepare_fork();
        let _ = crate::start::launcher::submit(|| {});
    });
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
    sys::ctor::remove_env_single_threaded(ROLE_VAR);
    sys::ctor::remove_env_single_threaded(PARENT_VAR);
    if !parent.is_some_and(dies_with) {
        sys::fork::exit_now(1);
    }
    INITIALIZED.store(true, Ordering::SeqCst);
    sys::fd::ignore_sigpipe();
    let code = std::panic::catch_unwind(|| match role.to_str() {
        Some(ROLE_WORKER) => match (sys::fd::adopt(3), sys::fd::adopt(4), sys::fd::adopt(5)) {
            (Some(tasks), Some(results), Some(arena)) => {
                crate::worker::serve(tasks, results, arena, None)
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

/// A global whose value belongs to one process: a child forked from this process sees no value
/// (and never drops its parent's), so threads and descriptors of the parent are never reused.
pub(crate) struct ProcessLocal<T> {
    slot: AtomicPtr<(u32, T)>,
    /// The id of the process one of whose threads is creating the value, or 0.
    making: AtomicU32,
}

impl<T: Send + Sync + 'static> ProcessLocal<T> {
    pub(crate) const fn new() -> Self {
        ProcessLocal {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            making: AtomicU32::new(0),
        }
    }

    /// The value of this process, if set.
    pub(crate) fn get(&self) -> Option<&'static T> {
        let p = self.slot.load(Ordering::Acquire);
        sys::fork::deref_leaked(p)
            .filter(|(pid, _)| *pid == std::process::id())
            .map(|(_, v)| v)
    }

    /// The value of this process, created by `make` if there is none yet. `make` runs once per
    /// process: a second thread waits for the first. The wait is keyed by process id, so a child
    /// forked while a thread of its parent was in `make` does not wait for a thread it lacks.
    pub(crate) fn get_or_try_init<E>(
        &self,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<&'static T, E> {
        let me = std::process::id();
        loop {
            if let Some(v) = self.get() {
                return Ok(v);
            }
            match self
                .making
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(holder) if holder != me => {
                    // Left behind by the process we were forked from.
                    let _ = self.making.compare_exchange(
                        holder,
                        0,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                Err(_) => std::thread::yield_now(),
            }
        }
        let made = match self.get() {
            Some(v) => Ok(v),
            None => make().map(|value| {
                let leaked: &'static mut (u32, T) = Box::leak(Box::new((me, value)));
                self.slot.store(leaked, Ordering::Release);
                &leaked.1
            }),
        };
        self.making.store(0, Ordering::Release);
        made
    }
}
