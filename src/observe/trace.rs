//! What a pool tells `tracing`: a span per pool (`ampire.pool`), one per call (`ampire.call`,
//! inside its pool's), and the workers' lives as events in the pool's span:
//!
//! | event | level |
//! |---|---|
//! | pool started (its start-up time), pool shut down | INFO |
//! | worker started (pid, start-up and `worker_init` time, whether it replaces one) | DEBUG |
//! | worker died (how, with its peak memory and processor time), killed for a task past its deadline, or for breaking the protocol | WARN |
//! | worker killed for a task of a dropped call; retired (lifespan, memory limit) | DEBUG |
//! | worker failed to start (it is tried again) | WARN |
//! | worker exit: its `worker_exit` ran (DEBUG), or failed (WARN) | DEBUG, WARN |
//! | call ended (how, tasks done and failed) | DEBUG (an `apply`'s: TRACE) |
//!
//! Nothing is logged per task above TRACE: a task's end is a counter and a histogram (`stats`,
//! and the `metrics` feature), not an event, and an `apply`, a call of one task, has its span and
//! its end at TRACE. With no subscriber interested, each of these costs a
//! load and a branch.

use std::panic::Location;
use std::time::Duration;

use tracing::{Level, Span, debug, event, info, trace, warn};

use super::cause::Cause;

/// The span of a pool: everything it logs is inside it.
pub(crate) fn pool_span(id: u64, name: &str, method: &str) -> Span {
    tracing::info_span!("ampire.pool", pool = id, name, method)
}

pub(crate) fn pool_started(span: &Span, workers: usize, took: Duration) {
    info!(parent: span, workers, took_ms = millis(took), "pool started");
}

pub(crate) fn pool_shut_down(span: &Span) {
    info!(parent: span, "pool shut down");
}

/// The span of a call of the pool in `span`.
pub(crate) fn call_span(pool: &Span, id: u64, kind: &str, site: &Location<'_>) -> Span {
    match kind {
        "apply" => tracing::trace_span!(parent: pool, "ampire.call", call = id, kind, %site),
        _ => tracing::debug_span!(parent: pool, "ampire.call", call = id, kind, %site),
    }
}

/// The call of `kind` in `span` ended, `how`, with `done` tasks of which `failed` failed.
pub(crate) fn call_ended(span: &Span, kind: &str, how: &str, done: u64, failed: u64) {
    match kind {
        "apply" => trace!(parent: span, how, done, failed, "call ended"),
        _ => debug!(parent: span, how, done, failed, "call ended"),
    }
}

/// A worker of slot `slot` started: `replacing` one that ended.
pub(crate) fn worker_started(
    span: &Span,
    slot: usize,
    pid: Option<u32>,
    start_up: Duration,
    init: Duration,
    replacing: bool,
) {
    debug!(
        parent: span,
        worker = slot,
        pid,
        start_up_ms = millis(start_up),
        init_ms = millis(init),
        replacing,
        "worker started"
    );
}

pub(crate) fn worker_start_failed(span: &Span, slot: usize, error: &dyn std::fmt::Display) {
    warn!(parent: span, worker = slot, %error, "worker failed to start; trying again");
}

/// Worker `slot` ended for `cause`, as `how` says; it is replaced.
pub(crate) fn worker_ended(span: &Span, slot: usize, cause: Cause, how: &str) {
    let cause_name = cause.name();
    match cause {
        Cause::Died | Cause::Timeout | Cause::Protocol => {
            event!(parent: span, Level::WARN, worker = slot, cause = cause_name, how, "worker ended")
        }
        Cause::Cancelled | Cause::Lifespan | Cause::Memory => {
            event!(parent: span, Level::DEBUG, worker = slot, cause = cause_name, how, "worker ended")
        }
    }
}

/// Worker `slot`'s exit function ran, or failed as `error` says.
pub(crate) fn worker_exited(span: &Span, slot: usize, error: Option<&dyn std::fmt::Display>) {
    match error {
        None => debug!(parent: span, worker = slot, "worker exited"),
        Some(error) => warn!(parent: span, worker = slot, %error, "worker exit failed"),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
