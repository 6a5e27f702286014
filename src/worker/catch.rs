//! Panics as data: the hook that records a task's panic (message, location, backtrace) and the
//! `catch_unwind` wrapper every task runs in.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Once, PoisonError};

use crate::proto::Failure;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<Failure>> = const { RefCell::new(None) };
}

/// Installs (once per process) the panic hook that records panics of tasks as data.
pub(crate) fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if ARMED.try_with(Cell::get).unwrap_or(false) {
                let _capturing = capture_lock()
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let failure = Failure {
                    message: payload_message(info.payload()),
                    location: info.location().map(|l| l.to_string()),
                    backtrace: Some(std::backtrace::Backtrace::force_capture().to_string()),
                    ..Failure::default()
                };
                let _ = CAPTURED.try_with(|c| *c.borrow_mut() = Some(failure));
            } else {
                previous(info);
            }
        }));
    });
}

/// Held (shared) while a task's panic captures its backtrace, and (exclusively) by the `Fork`
/// start method across `fork(2)`: std's backtrace machinery takes a global lock, and a child
/// forked while another thread held it would deadlock at its first panic.
pub(crate) fn capture_lock() -> &'static std::sync::RwLock<()> {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    &LOCK
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".into())
}

/// Runs `f`, turning a panic into a [`Failure`] with message, location and backtrace.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Failure> {
    install_panic_hook();
    let was = ARMED.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    ARMED.set(was);
    result.map_err(|payload| {
        let mut failure = CAPTURED.take().unwrap_or_default();
        if failure.message.is_empty() {
            failure.message = payload_message(&*payload);
        }
        // Dropping a panic payload may panic again; keep that from escaping.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        failure
    })
}
