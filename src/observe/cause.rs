//! Why a worker was replaced: what stats, logs and metrics count restarts by.

/// Why a worker was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Cause {
    /// It died: a signal, `abort`, `exit` (in a task, or while it started).
    Died,
    /// A task ran past its deadline.
    Timeout,
    /// A task of a dropped call ran on it.
    Cancelled,
    /// It broke the wire protocol.
    Protocol,
    /// Its `worker_lifespan` ended.
    Lifespan,
    /// It grew past `worker_max_memory`.
    Memory,
}

pub(crate) const CAUSES: usize = 6;

impl Cause {
    /// As logs and metrics label it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cause::Died => "died",
            Cause::Timeout => "timed_out",
            Cause::Cancelled => "cancelled",
            Cause::Protocol => "protocol",
            Cause::Lifespan => "lifespan",
            Cause::Memory => "memory",
        }
    }
}
