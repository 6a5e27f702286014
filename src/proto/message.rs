//! The messages: what each side's frame headers say.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Span;
use crate::sys::image::Identity;

/// Messages from the pool to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The first message (sent without waiting for `Hello`): who the worker is and how to build
    /// its context. The worker checks `identity` against its own before it resolves any offset.
    /// When `shared` is set, the serialised shared object is in the arena at `arena`, or else
    /// in the body.
    Setup {
        worker_id: u32,
        setup: i64,
        shared: bool,
        arena: Option<Span>,
        identity: Identity,
    },
    /// Run `count` tasks through the chunk entry `entry`; the inputs are in the arena at
    /// `arena`, or else in the body.
    Task {
        id: u64,
        entry: i64,
        count: u32,
        arena: Option<Span>,
    },
    /// Run the exit function (if any), send `Exit`, and leave.
    Shutdown { exit: Option<i64> },
}

/// Messages from a worker to the pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// First message of every worker; checked before anything else is sent.
    Hello {
        magic: u32,
        version: u16,
        pid: u32,
        identity: Identity,
    },
    /// Set-up (shared object, `worker_init`) is done; tasks may come.
    Ready,
    /// Set-up failed; the worker leaves after sending this.
    InitFailed(Failure),
    /// The results of task `id`; the body holds `count` serialised `Result<R, Failure>`.
    Done { id: u64, busy_ns: u64 },
    /// The exit function's result; on success the body holds the serialised value.
    Exit(Option<Failure>),
    /// A task could not be decoded or named; the worker leaves after sending this.
    Fatal(String),
}

/// A panic (or another failure) inside a worker, as data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub message: String,
    pub location: Option<String>,
    pub backtrace: Option<String>,
    /// `Debug` of the input, when the worker could still see it.
    pub input: Option<String>,
    /// Position of the failed task inside its chunk.
    pub index: u32,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(loc) = &self.location {
            write!(f, " at {loc}")?;
        }
        Ok(())
    }
}
