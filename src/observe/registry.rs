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

/// Whether something looks at the pools' workers live (a dashboard was started): only then do
/// pools note when each job was sent to its worker (a clock read under the pool's lock).
static WATCHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, pools note when each job is sent.
#[cfg_attr(not(feature = "dashboard"), allow(dead_code))]
pub(crate) fn watch() {
    WATCHED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether pools note when each job is sent.
pub(crate) fn watched() -> bool {
    WATCHED.load(std::sync::atomic::Ordering::Relaxed)
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
