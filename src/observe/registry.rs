//! The pools of this process, for whoever looks at all of them (the dashboard): a list of weak
//! references to each pool's observer and engine, and which pool a thread works for.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use super::Observer;
pub(crate) use super::view::Source;

struct Entry {
    observer: Weak<Observer>,
    source: Option<Weak<dyn Source>>,
}

fn pools() -> &'static Mutex<Vec<Entry>> {
    static POOLS: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

/// Lists a new pool (its engine is attached with [`attach`]).
pub(crate) fn register(observer: &Arc<Observer>) {
    let mut pools = pools().lock().unwrap_or_else(PoisonError::into_inner);
    pools.retain(|e| e.observer.strong_count() > 0);
    pools.push(Entry {
        observer: Arc::downgrade(observer),
        source: None,
    });
}

/// The engine of the pool `observer` watches.
pub(crate) fn attach(observer: &Arc<Observer>, source: Weak<dyn Source>) {
    let mut pools = pools().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = pools
        .iter_mut()
        .find(|e| e.observer.as_ptr() == Arc::as_ptr(observer))
    {
        e.source = Some(source);
    }
}

/// How many dashboards look at the pools' workers live: only while one does do pools note when
/// each job was sent to its worker (a clock read under the pool's lock).
static WATCHERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Pools note when each job is sent while this lives.
#[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
pub(crate) struct Watching(());

impl Watching {
    #[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
    pub(crate) fn start() -> Watching {
        WATCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Watching(())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHERS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether pools note when each job is sent.
pub(crate) fn watched() -> bool {
    WATCHERS.load(std::sync::atomic::Ordering::Relaxed) > 0
}

thread_local! {
    /// The pool and worker whose thread this is, for a pool built by one of its tasks.
    static WORKER: std::cell::Cell<Option<(u64, usize)>> = const { std::cell::Cell::new(None) };
}

/// This thread is worker `slot` of pool `pool` (a thread worker).
pub(crate) fn set_worker(pool: u64, slot: usize) {
    let _ = WORKER.try_with(|w| w.set(Some((pool, slot))));
}

/// The pool and worker a pool built on this thread runs in, if it is a thread worker's.
pub(crate) fn enclosing() -> Option<(u64, usize)> {
    WORKER.try_with(|w| w.get()).ok().flatten()
}

/// Every pool of this process still alive, with its engine.
pub(crate) fn live() -> Vec<(Arc<Observer>, Arc<dyn Source>)> {
    let pools = pools().lock().unwrap_or_else(PoisonError::into_inner);
    pools
        .iter()
        .filter_map(|e| Some((e.observer.upgrade()?, e.source.as_ref()?.upgrade()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_note_sending_times_only_while_a_dashboard_watches() {
        assert!(!watched());
        let (a, b) = (Watching::start(), Watching::start());
        assert!(watched());
        drop(a);
        assert!(watched(), "another still watches");
        drop(b);
        assert!(!watched());
    }
}
