//! PLACEHOLDER
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod call;
mod dispatch;
mod error;
mod handle;
mod pool;
mod role;
mod start;
#[allow(unsafe_code)]
mod sys;
mod task;
mod wire;
mod worker;

pub use crate::error::Error;
pub use crate::handle::{Apply, ApplyFuture, Map, MapFuture, MapStream};
pub use crate::pool::{AsyncPool, Builder};
pub use crate::role::init;
pub use crate::start::StartMethod;
pub use crate::task::{Input, Output, Shared, Worker};
#[doc(hidden)]
pub use crate::worker::inject_raw_result_bytes as __inject_raw_result_bytes;
