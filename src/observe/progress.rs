//! Progress bars: a call's `.progress_bar(true)`, and the bars of pools nested in its workers.
//!
//! One `MultiProgress` per process, drawn on stderr by indicatif, which hides it when stderr is
//! not a terminal. Where a call's bar goes:
//!
//! - in a process that is not a worker: drawn, under the bar of the call running on the thread
//!   worker that runs this pool (a pool nested in a `Threading` worker), or at the bottom;
//! - in a process worker (a pool nested in one): not drawn. Its progress travels to the pool that
//!   owns the worker as `Event::Progress` frames on the worker's result stream, at most about ten
//!   a second per bar, with absolute counts, so that an event can be dropped or merged without
//!   harm. That pool draws it under the bar of the call its worker runs, or, if it is itself in a
//!   worker, passes it on upward, so bars of pools nested at any depth and under any start
//!   method reach the top.
//!
//! A bar ends when its call finishes (left at its final count), fails fast or is dropped (left
//! with a message saying so); the bars nested under it end with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{CallProgress, Observer};
use crate::proto::Event;

/// How often a bar of a nested pool is sent, at most.
const SEND_EVERY: Duration = Duration::from_millis(100);

/// The bars of this process, on stderr.
pub(crate) fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Whether bars drawn in this process can be seen (stderr is a terminal, and this process is not
/// a worker, whose bars travel to its pool instead).
pub(crate) fn visible() -> bool {
    !crate::worker::in_process_worker() && !multi().is_hidden()
}

thread_local! {
    /// The call whose job the thread worker on this thread runs: a pool built by its task nests
    /// its bars under that call's.
    static RUNNING: std::cell::RefCell<Option<Weak<CallProgress>>> = const { std::cell::RefCell::new(None) };
}

/// A thread worker starts a job of `call` (or none) on this thread.
pub(crate) fn running_on_this_thread(call: Option<&Arc<CallProgress>>) {
    let _ = RUNNING.try_with(|r| *r.borrow_mut() = call.map(Arc::downgrade));
}

fn running_here() -> Option<Arc<CallProgress>> {
    RUNNING
        .try_with(|r| r.borrow().as_ref().and_then(Weak::upgrade))
        .ok()
        .flatten()
}

/// How a call's progress is shown.
pub(crate) enum Bar {
    /// A bar drawn in this process.
    Drawn { bar: ProgressBar, multi: MultiProgress },
    /// Events for the pool that owns this worker process.
    Sent {
        id: u64,
        parent: Option<u64>,
        label: String,
        /// When it was last sent (nanoseconds since `origin`).
        last: AtomicU64,
        origin: Instant,
    },
}

/// How a call ended, for its bar.
pub(crate) enum Close {
    Done,
    Failed,
    Dropped,
}

impl Bar {
    /// The bar of a new call of `observer`; `target` is where the pool draws (tests), when not
    /// on the process's stderr.
    pub(crate) fn start(observer: &Observer, call: &CallProgress) -> Bar {
        let target = observer.draw_target();
        let label = format!("{} {}", observer.name, call.kind);
        let parent = running_here();
        if target.is_none() && crate::worker::in_process_worker() {
            return Bar::Sent {
                id: new_id(),
                parent: parent.and_then(|p| p.bar.get().and_then(Bar::sent_id)),
                label,
                last: AtomicU64::new(0),
                origin: Instant::now(),
            };
        }
        let bar = new_bar(&label, call.counts().2);
        // Under the bar of the call whose thread worker builds this pool, if it has one.
        let under = parent.as_ref().and_then(|p| match p.bar.get() {
            Some(Bar::Drawn { bar, multi }) => Some((bar.clone(), multi.clone())),
            _ => None,
        });
        let (bar, multi) = match (under, target) {
            (Some((above, multi)), None) => (multi.insert_after(&above, bar), multi),
            (_, Some(multi)) => (multi.add(bar), multi.clone()),
            (None, None) => (multi().add(bar), multi().clone()),
        };
        Bar::Drawn { bar, multi }
    }

    fn sent_id(&self) -> Option<u64> {
        match self {
            Bar::Sent { id, .. } => Some(*id),
            Bar::Drawn { .. } => None,
        }
    }

    /// Shows `call`'s counts (a sent bar at most about ten times a second).
    pub(crate) fn update(&self, call: &CallProgress) {
        match self {
            Bar::Drawn { bar, .. } => show(bar, call.counts()),
            Bar::Sent { last, origin, .. } => {
                let now = origin.elapsed().as_nanos() as u64;
                let then = last.load(Ordering::Relaxed);
                if now.saturating_sub(then) >= SEND_EVERY.as_nanos() as u64
                    && last
                        .compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    self.send(call, false);
                }
            }
        }
    }

    /// The call ended: the bar stops, and so do the bars nested under it.
    pub(crate) fn close(&self, call: &CallProgress, how: Close) {
        match self {
            Bar::Drawn { bar, .. } => {
                show(bar, call.counts());
                match how {
                    Close::Done => bar.finish(),
                    Close::Failed => bar.abandon_with_message(failed_message(call, "failed")),
                    Close::Dropped => bar.abandon_with_message(failed_message(call, "dropped")),
                }
            }
            Bar::Sent { .. } => self.send(call, true),
        }
        close_nested(call);
    }

    fn send(&self, call: &CallProgress, closed: bool) {
        let Bar::Sent {
            id, parent, label, ..
        } = self
        else {
            return;
        };
        let (done, failed, total) = call.counts();
        crate::worker::send_event(&Event::Progress {
            bar: *id,
            parent: *parent,
            label: label.clone(),
            done,
            total,
            failed,
            closed,
        });
    }
}

fn failed_message(call: &CallProgress, what: &str) -> String {
    match call.counts().1 {
        0 => what.to_owned(),
        n => format!("{what}, {n} failed"),
    }
}

/// A bar id, unique on this machine for the pool's life: the process id and a counter.
fn new_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (std::process::id() as u64) << 32 | NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff
}

fn new_bar(label: &str, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::hidden()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()),
    };
    bar.set_style(style(total.is_some()));
    bar.with_prefix(label.to_owned())
}

fn style(known: bool) -> ProgressStyle {
    let template = match known {
        true => "{prefix} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta}) {msg}",
        false => "{prefix} {pos} done ({per_sec}) {msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Shows counts on a bar: position, length once known, failures in its message.
fn show(bar: &ProgressBar, (done, failed, total): (u64, u64, Option<u64>)) {
    if let Some(n) = total {
        if bar.length() != Some(n) {
            bar.set_length(n);
            bar.set_style(style(true));
        }
    }
    bar.set_position(done);
    if failed > 0 {
        bar.set_message(format!("{failed} failed"));
    }
}

/// The calls of nested pools this process heard of (and draws), by bar id.
struct Nested {
    bar: ProgressBar,
    multi: MultiProgress,
    /// The call of this process under which it is drawn (directly or through other nested
    /// bars): it ends with that call.
    root: Weak<CallProgress>,
    view: NestedView,
}

/// A call of a pool nested in a worker, as its progress events tell: for the dashboard.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct NestedView {
    pub id: u64,
    /// The nested call it runs under, if not directly under the worker's call.
    pub parent: Option<u64>,
    pub label: String,
    /// The worker of this process's pool it runs in (or under).
    pub worker: usize,
    pub done: u64,
    pub failed: u64,
    pub total: Option<u64>,
}

/// The nested calls running under `call`.
pub(crate) fn nested_under(call: &CallProgress) -> Vec<NestedView> {
    let nested = nested().lock().unwrap_or_else(PoisonError::into_inner);
    nested
        .values()
        .filter(|n| n.root.upgrade().is_some_and(|r| std::ptr::eq(&*r, call)))
        .map(|n| n.view.clone())
        .collect()
}

fn nested() -> &'static Mutex<HashMap<u64, Nested>> {
    static NESTED: OnceLock<Mutex<HashMap<u64, Nested>>> = OnceLock::new();
    NESTED.get_or_init(Default::default)
}

/// Ends the nested bars drawn under `call`.
fn close_nested(call: &CallProgress) {
    let mut nested = nested().lock().unwrap_or_else(PoisonError::into_inner);
    nested.retain(|_, n| {
        let mine = n.root.upgrade().is_none_or(|r| std::ptr::eq(&*r, call));
        if mine {
            n.bar.abandon();
        }
        !mine
    });
}

/// A pool running in worker `slot` of `observer`'s pool sent its progress; `running` is the
/// call whose job that worker runs. Drawn here, under that call's bar (or the nested bar it
/// names), or passed on to the pool that owns this process when this process is a worker.
pub(crate) fn heard(
    observer: &Observer,
    slot: usize,
    running: Option<Arc<CallProgress>>,
    event: Event,
) {
    let Event::Progress {
        bar: id,
        parent,
        label,
        done,
        total,
        failed,
        closed,
    } = event
    else {
        return;
    };
    let label = format!("  {label} (worker {slot})");
    if crate::worker::in_process_worker() {
        // Upward: a bar nested directly under this worker's call goes under that call's bar.
        let parent = parent.or_else(|| running.as_ref().and_then(|c| c.bar.get()?.sent_id()));
        crate::worker::send_event(&Event::Progress {
            bar: id,
            parent,
            label,
            done,
            total,
            failed,
            closed,
        });
        return;
    }
    let mut all = nested().lock().unwrap_or_else(PoisonError::into_inner);
    if closed {
        if let Some(n) = all.remove(&id) {
            show(&n.bar, (done, failed, total));
            n.bar.finish();
        }
        return;
    }
    if let Some(n) = all.get_mut(&id) {
        show(&n.bar, (done, failed, total));
        (n.view.done, n.view.failed, n.view.total) = (done, failed, total);
        return;
    }
    // A new bar: under the nested bar it names, or the call its worker runs.
    let root = running.as_ref().map(Arc::downgrade).unwrap_or_default();
    let (above, root) = match parent.and_then(|p| all.get(&p)) {
        Some(p) => (Some((p.bar.clone(), p.multi.clone())), p.root.clone()),
        None => match running.as_ref().and_then(|c| c.bar.get()) {
            Some(Bar::Drawn { bar, multi }) => (Some((bar.clone(), multi.clone())), root),
            _ => (None, root),
        },
    };
    let bar = new_bar(&label, total);
    let (bar, multi) = match above {
        Some((above, multi)) => (multi.insert_after(&above, bar), multi),
        None => (observer.multi().add(bar), observer.multi().clone()),
    };
    show(&bar, (done, failed, total));
    let view = NestedView {
        id,
        parent,
        label: label.trim().to_owned(),
        worker: slot,
        done,
        failed,
        total,
    };
    all.insert(
        id,
        Nested {
            bar,
            multi,
            root,
            view,
        },
    );
}
