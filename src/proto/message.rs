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
    /// in the body. `max_frame` bounds every frame after this one, both ways.
    Setup {
        worker_id: u32,
        setup: i64,
        shared: bool,
        arena: Option<Span>,
        identity: Identity,
        max_frame: u64,
        /// Fault injection for tests: the worker exits with this status before it says hello.
        fault: Option<i32>,
        /// The exit entry, which a worker runs when it retires as well as at shutdown.
        exit: Option<i64>,
        /// The worker retires after this many tasks...
        lifespan: Option<u64>,
        /// ...or after a task that left it with more resident memory than this.
        max_memory: Option<u64>,
        /// Measure each task for insights: 0 no, 1 yes, 2 with its peak memory.
        insights: u8,
    },
    /// Run `count` tasks through the chunk entry `entry`; the inputs are in the arena at
    /// `arena`, or else in the body. `seq` numbers the jobs of one worker in the order they are
    /// sent (wrapping); the worker claims each in its journal before it starts it, and skips one
    /// the pool took back. `hold`: the tasks are known to be tiny, and their results may wait
    /// (about 50 µs) to travel with the next ones; otherwise the worker sends what it holds
    /// before it starts the job.
    Task {
        id: u64,
        seq: u8,
        hold: bool,
        entry: i64,
        count: u32,
        arena: Option<Span>,
        /// How long each task may run, in microseconds; 0: no limit. The worker publishes each
        /// task's deadline in its journal (`proto::deadline`) as the task starts.
        timeout_us: u64,
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
    InitFailed(Box<Failure>),
    /// Results of some tasks of a job.
    Done(Batch),
    /// Results of some tasks of a job, then the failure of the task after them.
    Failed(Batch, Box<Failure>),
    /// The exit function's result; on success the body holds the serialised value.
    Exit(Option<Box<Failure>>),
    /// The worker's life is over (`worker_lifespan`, or `worker_max_memory` when `memory`): it
    /// runs no other task, and every task sent to it whose result it has not sent is the pool's
    /// again. It runs its exit function next, sends `Exit` and leaves.
    Retiring { memory: bool },
    /// A task could not be decoded or named; the worker leaves after sending this.
    Fatal(String),
    /// Something the worker tells the pool at any time, between any two other messages.
    Event(Event),
    /// The task running ran past its deadline; the worker ends itself after sending this (a
    /// worker on another host, whose deadline the pool cannot watch).
    TimedOut,
}

/// What a worker may tell the pool at any time. The pool takes each as news and answers none;
/// one it has no use for is dropped, never a reason to kill the worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    /// Task `index` of job `id` started.
    Started { id: u64, index: u32 },
    /// Where a call of a pool running inside the worker stands: absolute counts, so that events
    /// can be merged or dropped on the way. `bar` names it (unique on the machine); `parent`,
    /// the bar it nests under, or none for the call the worker runs.
    Progress {
        bar: u64,
        parent: Option<u64>,
        label: String,
        done: u64,
        total: Option<u64>,
        failed: u64,
        closed: bool,
    },
    /// Task `index` of job `id` is among the slowest the worker ran (insights): how long it ran,
    /// the processor time and peak memory it used when measured, and its input's `Debug`.
    Slow {
        id: u64,
        index: u32,
        ns: u64,
        cpu_ns: Option<u64>,
        peak_memory: Option<u64>,
        input: String,
    },
    /// A line the worker printed.
    Output { stderr: bool, line: Vec<u8> },
}

/// The results of consecutive tasks of one job: `values` results of tasks `first..`, in the
/// worker's journal at `at`, or in the frame's body when `at` is empty (small batches, and a
/// worker without a journal).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub id: u64,
    pub first: u32,
    pub values: u32,
    pub at: Span,
    /// Time the tasks of the batch took.
    pub busy_ns: u64,
    /// Processor time the worker used since its last batch, when it measures it (insights).
    pub cpu_ns: u64,
}

/// How a task (or `worker_init`/`worker_exit`) failed, as data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Fault {
    /// It panicked.
    #[default]
    Panic,
    /// Its result could not be serialised, or is larger than a frame.
    Codec,
}

/// A panic (or another failure) inside a worker, as data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub fault: Fault,
    pub message: String,
    pub location: Option<String>,
    pub backtrace: Option<String>,
    /// `Debug` of the input, when the worker could still see it.
    pub input: Option<String>,
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

/// The most of a value's `Debug` that a failure carries.
const DESCRIBE_MAX: usize = 1024;

/// `value`'s `Debug`, cut at about 1 KiB (an error report names the input; it need not carry a
/// megabyte of it).
pub(crate) fn describe(value: &dyn fmt::Debug) -> String {
    struct Capped(String, bool);
    impl fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if self.1 {
                return Err(fmt::Error);
            }
            let room = DESCRIBE_MAX.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&s[..cut]);
            self.0.push('…');
            self.1 = true;
            Err(fmt::Error)
        }
    }
    let mut out = Capped(String::new(), false);
    let _ = fmt::write(&mut out, format_args!("{value:?}"));
    out.0
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_description_is_cut_at_a_kilobyte() {
        assert_eq!(describe(&17u64), "17");
        let long = describe(&vec![0u8; 100_000]);
        assert!(
            long.len() <= 1024 + '…'.len_utf8() && long.ends_with('…'),
            "{}",
            long.len()
        );
        let wide = describe(&"é".repeat(2000));
        assert!(wide.ends_with('…'));
    }
}
