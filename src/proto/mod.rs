//! The wire protocol between the pool and a process worker: one home for all of it.
//!
//! - [`frame`]: how bytes become frames, on both sides (blocking for workers, async for the pool);
//! - [`message`]: what the frames say: the headers each side sends, failures as data, events;
//! - [`body`]: how bulk data (inputs, results, the shared object) is laid out in a frame's body or
//!   in shared memory;
//! - [`slice`]: [`SharedSlice`](crate::SharedSlice), read in place from the arena by workers;
//! - [`handshake`]: the first exchange, both sides of it;
//! - [`deadline`]: how a worker publishes the deadline of the task it runs.
//!
//! This module and the worker loop import nothing of the pool's side, so a worker could be built
//! from them alone.

pub(crate) mod body;
pub(crate) mod deadline;
pub(crate) mod frame;
#[cfg(test)]
mod fuzz;
pub(crate) mod handshake;
pub(crate) mod message;
pub(crate) mod slice;

pub(crate) use body::{Body, Span};
pub(crate) use frame::{AsyncReader, DEFAULT_MAX_FRAME, Reader, Writer};
pub(crate) use message::{Batch, Event, Failure, Fault, FromWorker, ToWorker, describe};

/// Protocol magic, "amp" and the major version.
pub(crate) const MAGIC: u32 = 0x616d_7001;
/// Bumped on every incompatible change of the messages.
pub(crate) const VERSION: u16 = 6;
