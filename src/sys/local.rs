//! Process-local globals: a value that belongs to one process, never to a child forked from it.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

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
        deref_leaked(p)
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

/// Reads a pointer that was produced by `Box::leak` and is never freed.
fn deref_leaked<T>(p: *mut T) -> Option<&'static T> {
    // SAFETY: `ProcessLocal` stores only pointers obtained from `Box::leak` (or null), and never
    // frees them, so a non-null pointer is valid for the rest of the process and shared reads are
    // the only access.
    unsafe { p.as_ref() }
}
