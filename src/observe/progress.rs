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
//! A bar ends when its call finishes (at its final count), fails fast or is dropped (with a
//! message saying so). The bars drawn under one top-level call of this process (a *family*: the
//! call's bar, then the bars of pools nested in its workers, in the order they started) stay
//! together until that call ends: a nested bar that ends stays in place at its final count. When
//! the top-level call ends, its nested bars still running stop, and the whole family leaves the
//! live area as plain lines printed above the bars still running. So what is printed later (a
//! worker's output, the next call's bars) comes below them; a bar that ended is never wiped by
//! what is printed after it (indicatif wipes the lines of bars dropped from a `MultiProgress`
//! at its next `println`, which the families avoid by never dropping a bar that is drawn).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{CallProgress, Observer};
use crate::proto::Event;
use crate::proto::deadline::coarse_us;
use crate::sys::local::ProcessLocal;

/// How often a bar of a nested pool is sent, at most (its first count goes at once).
const SEND_EVERY: Duration = Duration::from_millis(100);

/// How often a drawn bar's counts are handed to indicatif, at most (those skipped are shown by
/// [`freshen`]'s thread soon after, and the last ones when the call ends).
const SHOW_EVERY_US: u64 = 25_000;

/// The width of a bar's gauge, in cells (the styles' `{bar:30}`).
const BAR_WIDTH: usize = 30;

/// `Bar::Sent::last` before the first send.
const NEVER: u64 = u64::MAX;

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
    static RUNNING: std::cell::RefCell<Option<Running>> = const { std::cell::RefCell::new(None) };
    /// Its key (0: none), to tell at a glance that the next job is of the same call.
    static RUNNING_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A thread worker starts a job of `call` (or none) on this thread. (The next job is mostly of
/// the same call, which is then left as it is: no reference count changes hands.)
///
/// `key` tells calls apart: the address of `keyed`, something the job holds of its call (so
/// that the call itself, whose cache lines other threads write, is read only when it changes;
/// and `keyed` is kept, weakly, so that its address is not reused meanwhile). `call` gives the
/// call's progress then.
pub(crate) fn running_on_this_thread<K: Any + Send + Sync>(
    keyed: Option<&Arc<K>>,
    call: impl FnOnce() -> Option<Arc<CallProgress>>,
) {
    let key = keyed.map_or(0, |k| Arc::as_ptr(k) as usize);
    if RUNNING_AT.with(|a| a.replace(key)) == key {
        return;
    }
    let running = keyed.zip(call()).map(|(k, c)| Running {
        call: Arc::downgrade(&c),
        _keyed: Arc::downgrade(k) as Weak<dyn Any + Send + Sync>,
    });
    let _ = RUNNING.try_with(|r| *r.borrow_mut() = running);
}

/// The call a thread worker runs a job of.
struct Running {
    call: Weak<CallProgress>,
    _keyed: Weak<dyn Any + Send + Sync>,
}

fn running_here() -> Option<Arc<CallProgress>> {
    RUNNING
        .try_with(|r| r.borrow().as_ref().and_then(|r| r.call.upgrade()))
        .ok()
        .flatten()
}

/// How a call's progress is shown.
pub(crate) enum Bar {
    /// A bar drawn in this process: member `member` of family `family` (0 heads it). `shown`:
    /// when its counts were last handed to indicatif (`coarse_us`), which is done at most
    /// every `SHOW_EVERY_US` (indicatif draws at most 20 times a second anyway).
    Drawn {
        bar: ProgressBar,
        family: u64,
        member: usize,
        shown: AtomicU64,
        /// Counts changed since they were last shown.
        dirty: AtomicBool,
    },
    /// Events for the pool that owns this worker process.
    Sent {
        id: u64,
        parent: Option<u64>,
        label: String,
        /// When it was last sent (nanoseconds since `origin`).
        last: AtomicU64,
        origin: Instant,
        /// Counts changed since they were last sent.
        dirty: AtomicBool,
    },
}

/// How a call ended, for its bar.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Close {
    Done,
    Failed,
    Dropped,
}

impl Close {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Close::Done => "done",
            Close::Failed => "failed",
            Close::Dropped => "dropped",
        }
    }
}

impl Bar {
    /// The bar of a new call of `observer`; `target` is where the pool draws (tests), when not
    /// on the process's stderr.
    pub(crate) fn start(observer: &Observer, call: &CallProgress) -> Bar {
        let target = observer.draw_target();
        let label = format!("{} {}", observer.name, call.kind);
        let parent = running_here();
        // Nested in a thread worker of a pool of this process: labelled as events label it.
        let nested_label = match (&parent, super::registry::enclosing()) {
            (Some(_), Some((_, slot))) => Some(format!("  {label} (worker {slot})")),
            _ => None,
        };
        if target.is_none() && crate::worker::in_process_worker() {
            return Bar::Sent {
                id: new_id(),
                parent: parent.and_then(|p| p.bar.get().and_then(Bar::sent_id)),
                label,
                last: AtomicU64::new(NEVER),
                origin: Instant::now(),
                dirty: AtomicBool::new(false),
            };
        }
        let bar = new_bar(nested_label.as_deref().unwrap_or(&label), call.counts().2);
        // In the family of the call whose thread worker builds this pool, if it has a bar.
        let under = parent.as_ref().and_then(|p| match p.bar.get() {
            Some(Bar::Drawn { family, .. }) => Some(*family),
            _ => None,
        });
        let (bar, family, member) = match (under, target) {
            (Some(family), None) => join_or_head(family, bar, multi()),
            (_, Some(multi)) => head(multi, bar),
            (None, None) => head(multi(), bar),
        };
        Bar::Drawn {
            bar,
            family,
            member,
            shown: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        }
    }

    fn sent_id(&self) -> Option<u64> {
        match self {
            Bar::Sent { id, .. } => Some(*id),
            Bar::Drawn { .. } => None,
        }
    }

    /// Shows `call`'s counts (a sent bar at most about ten times a second). Counts it skips
    /// are shown by [`freshen`] soon after, even if the call goes quiet.
    pub(crate) fn update(&self, call: &CallProgress) {
        match self {
            Bar::Drawn {
                bar, shown, dirty, ..
            } => {
                let now = coarse_us();
                if now.saturating_sub(shown.load(Ordering::Relaxed)) >= SHOW_EVERY_US {
                    shown.store(now, Ordering::Relaxed);
                    dirty.store(false, Ordering::Relaxed);
                    show(bar, call.counts());
                } else {
                    dirty.store(true, Ordering::Relaxed);
                }
            }
            Bar::Sent {
                last,
                origin,
                dirty,
                ..
            } => {
                let now = origin.elapsed().as_nanos() as u64;
                let then = last.load(Ordering::Relaxed);
                if (then == NEVER || now.saturating_sub(then) >= SEND_EVERY.as_nanos() as u64)
                    && last
                        .compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    dirty.store(false, Ordering::Relaxed);
                    self.send(call, false);
                } else {
                    dirty.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Shows (or sends) `call`'s counts if an update skipped them.
    fn flush(&self, call: &CallProgress) {
        match self {
            Bar::Drawn {
                bar, shown, dirty, ..
            } => {
                if dirty.swap(false, Ordering::Relaxed) {
                    shown.store(coarse_us(), Ordering::Relaxed);
                    show(bar, call.counts());
                }
            }
            Bar::Sent {
                last,
                origin,
                dirty,
                ..
            } => {
                if dirty.swap(false, Ordering::Relaxed) {
                    last.store(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    self.send(call, false);
                }
            }
        }
    }

    /// The call ended: the bar stops; if it heads its family, the bars nested under it stop,
    /// and the family leaves the live area.
    pub(crate) fn close(&self, call: &CallProgress, how: Close) {
        let (Bar::Drawn { dirty, .. } | Bar::Sent { dirty, .. }) = self;
        dirty.store(false, Ordering::Relaxed);
        match self {
            Bar::Drawn {
                bar,
                family,
                member,
                ..
            } => {
                show(bar, call.counts());
                match how {
                    Close::Done => bar.finish(),
                    Close::Failed => bar.abandon_with_message(failed_message(call, "failed")),
                    Close::Dropped => bar.abandon_with_message(failed_message(call, "dropped")),
                }
                ended(*family, *member);
            }
            Bar::Sent { .. } => self.send(call, true),
        }
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

/// The calls of this process that have a bar, for [`freshen`].
static BARRED: ProcessLocal<Mutex<Vec<Weak<CallProgress>>>> = ProcessLocal::new();

/// How often the counts an update skipped are shown at the latest.
const FRESHEN_EVERY: Duration = Duration::from_millis(100);

/// Keeps `call`'s bar fresh: a thread of this process (started with its first bar) shows, every
/// [`FRESHEN_EVERY`], the counts that updates skipped, so that a bar never lags its call for
/// long, even when the call goes quiet (a stream whose consumer waits).
pub(crate) fn freshen(call: &Arc<CallProgress>) {
    let Ok(calls) = BARRED.get_or_try_init(|| {
        std::thread::Builder::new()
            .name("ampire-bars".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FRESHEN_EVERY);
                    let Some(calls) = BARRED.get() else { continue };
                    let live: Vec<Arc<CallProgress>> = {
                        let mut calls = calls.lock().unwrap_or_else(PoisonError::into_inner);
                        calls.retain(|c| c.strong_count() > 0);
                        calls.iter().filter_map(Weak::upgrade).collect()
                    };
                    for call in live {
                        if let Some(bar) = call.bar.get() {
                            bar.flush(&call);
                        }
                    }
                }
            })
            .map(|_| Mutex::new(Vec::new()))
    }) else {
        return; // no thread: counts show as they come, and at the end
    };
    let mut calls = calls.lock().unwrap_or_else(PoisonError::into_inner);
    calls.push(Arc::downgrade(call));
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
    /// The pool of this process whose worker runs it, and which one.
    pool: u64,
    bar: ProgressBar,
    family: u64,
    member: usize,
    /// The call of this process under which it is drawn (directly or through other nested
    /// bars).
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

/// A pool running in worker `slot` of `observer`'s pool sent its progress; `running` is the
/// call whose job that worker runs. Drawn here, under that call's bar (or the nested bar it
/// names), or passed on to the pool that owns this process when this process is a worker.
pub(crate) fn heard(
    observer: &Observer,
    slot: usize,
    running: Option<Arc<CallProgress>>,
    event: Event,
) {
    let mut event = event;
    let Event::Progress { parent, label, .. } = &mut event else {
        return;
    };
    *label = format!("  {label} (worker {slot})");
    if crate::worker::in_process_worker() {
        // Upward: a bar nested directly under this worker's call goes under that call's bar.
        if parent.is_none() {
            *parent = running.as_ref().and_then(|c| c.bar.get()?.sent_id());
        }
        crate::worker::send_event(&event);
        return;
    }
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
    let mut all = nested().lock().unwrap_or_else(PoisonError::into_inner);
    if !all.contains_key(&id) {
        // A new bar: under the nested bar it names, or the call its worker runs.
        let root = running.as_ref().map(Arc::downgrade).unwrap_or_default();
        let (under, root) = match parent.and_then(|p| all.get(&p)) {
            Some(p) => (Some(p.family), p.root.clone()),
            None => match running.as_ref().and_then(|c| c.bar.get()) {
                Some(Bar::Drawn { family, .. }) => (Some(*family), root),
                _ => (None, root),
            },
        };
        let bar = new_bar(&label, total);
        let (bar, family, member) = match under {
            Some(family) => join_or_head(family, bar, observer.multi()),
            None => head(observer.multi(), bar),
        };
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
                pool: observer.id,
                bar,
                family,
                member,
                root,
                view,
            },
        );
    }
    let Some(n) = all.get_mut(&id) else {
        return;
    };
    show(&n.bar, (done, failed, total));
    (n.view.done, n.view.failed, n.view.total) = (done, failed, total);
    if closed {
        n.bar.finish();
        let (family, member) = (n.family, n.member);
        all.remove(&id);
        drop(all);
        ended(family, member);
    }
}

/// Worker `slot` of pool `pool` ended (it died, was killed, or left): the bars of the pools
/// nested in it end too, saying so, since no event will close them now.
pub(crate) fn worker_gone(pool: u64, slot: usize) {
    let gone: Vec<Nested> = {
        let mut all = nested().lock().unwrap_or_else(PoisonError::into_inner);
        let ids: Vec<u64> = all
            .iter()
            .filter(|(_, n)| n.pool == pool && n.view.worker == slot)
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| all.remove(id)).collect()
    };
    for n in gone {
        n.bar.abandon_with_message("its worker ended");
        ended(n.family, n.member);
    }
}

/// Bars that stay together on screen until their head's call ends.
struct Family {
    multi: MultiProgress,
    /// In the order they are drawn, the head first; with the line each leaves, once it ended.
    bars: Vec<(ProgressBar, Option<String>)>,
}

fn families() -> &'static Mutex<HashMap<u64, Family>> {
    static FAMILIES: OnceLock<Mutex<HashMap<u64, Family>>> = OnceLock::new();
    FAMILIES.get_or_init(Default::default)
}

/// `bar`, drawn at the bottom of `multi`, heads a new family: (bar, family, member).
fn head(multi: &MultiProgress, bar: ProgressBar) -> (ProgressBar, u64, usize) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let bar = multi.add(bar);
    let family = Family {
        multi: multi.clone(),
        bars: vec![(bar.clone(), None)],
    };
    let mut all = families().lock().unwrap_or_else(PoisonError::into_inner);
    all.insert(id, family);
    (bar, id, 0)
}

/// `bar` joins family `id`, drawn under its last bar; or, when that family has left already,
/// heads a new one at the bottom of `multi`.
fn join_or_head(id: u64, bar: ProgressBar, multi: &MultiProgress) -> (ProgressBar, u64, usize) {
    let mut all = families().lock().unwrap_or_else(PoisonError::into_inner);
    let Some(f) = all.get_mut(&id) else {
        drop(all);
        return head(multi, bar);
    };
    let last = &f.bars[f.bars.len() - 1].0;
    let bar = f.multi.insert_after(last, bar);
    f.bars.push((bar.clone(), None));
    (bar, id, f.bars.len() - 1)
}

/// Member `member` of family `id` ended (its bar shows how). The head's end takes the family
/// off the live area: its bars still running stop, and each leaves a line above the bars that
/// run on.
fn ended(id: u64, member: usize) {
    let mut all = families().lock().unwrap_or_else(PoisonError::into_inner);
    if member != 0 {
        if let Some((bar, line)) = all.get_mut(&id).and_then(|f| f.bars.get_mut(member)) {
            *line = Some(final_line(bar));
        }
        return;
    }
    let Some(family) = all.remove(&id) else {
        return;
    };
    drop(all);
    let lines: Vec<String> = family
        .bars
        .iter()
        .map(|(bar, line)| {
            line.clone().unwrap_or_else(|| {
                if !bar.is_finished() {
                    bar.abandon();
                }
                final_line(bar)
            })
        })
        .collect();
    for (bar, _) in &family.bars {
        family.multi.remove(bar);
    }
    let _ = family.multi.println(lines.join("\n"));
    let mut nested = nested().lock().unwrap_or_else(PoisonError::into_inner);
    nested.retain(|_, n| n.family != id);
}

/// The line a bar that ended leaves: its label, its counts, how long it took and how fast it
/// went, and its message (failures, or how it ended).
fn final_line(bar: &ProgressBar) -> String {
    let done = bar.position();
    let took = bar.elapsed();
    let counts = match bar.length() {
        Some(len) => format!("[{}] {done}/{len}", gauge(done, len, BAR_WIDTH)),
        None => format!("{done} done"),
    };
    let rate = match took.as_secs_f64() {
        s if s > 0.0 => done as f64 / s,
        _ => 0.0,
    };
    let message = bar.message();
    let message = match message.is_empty() {
        true => String::new(),
        false => format!(" {message}"),
    };
    format!(
        "{} {counts} (took {}, {rate:.1}/s){message}",
        bar.prefix(),
        crate::human::hms(took),
    )
}

/// A bar of `width` cells, `done` of `len` filled, as indicatif draws it with `=> `.
fn gauge(done: u64, len: u64, width: usize) -> String {
    let filled = match len {
        0 => width,
        _ => (done.min(len) as u128 * width as u128 / len as u128) as usize,
    };
    let mut g = "=".repeat(filled);
    if filled < width {
        g.push('>');
        g.push_str(&" ".repeat(width - filled - 1));
    }
    g
}
