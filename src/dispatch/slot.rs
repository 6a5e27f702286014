//! A worker slot for the pool's whole life: it starts a worker, serves it until it leaves, and
//! replaces it when it dies, under the same id.

use std::sync::Arc;

use super::Core;
use super::driver::{Ended, serve};
use crate::start::Connected;

/// Runs worker `slot` for the pool's whole life, replacing it whenever it dies.
pub(super) async fn drive(core: Arc<Core>, slot: usize, first: Connected) {
    let mut conn = Some(first);
    loop {
        if core.is_stopped() {
            return;
        }
        let c = match conn.take() {
            Some(c) => c,
            // A replacement that cannot start breaks the pool, rather than leaving its callers
            // waiting forever.
            None => match core.start_slot(slot, false).await {
                Ok(c) => c,
                Err(e) => {
                    core.break_pool(e);
                    return;
                }
            },
        };
        match serve(&core, slot, c).await {
            Ended::Done | Ended::Stopped => return,
            Ended::Died => core.room_for_a_thread().await,
        }
    }
}
