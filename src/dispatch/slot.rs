//! A worker slot for the pool's whole life: it starts a worker, serves it until it leaves, and
//! replaces it when it dies, under the same id.

use std::sync::Arc;
use std::time::Duration;

use super::Core;
use super::driver::{Ended, serve};
use crate::start::Connected;

/// Runs worker `slot` for the pool's whole life, replacing it whenever it dies.
pub(super) async fn drive(core: Arc<Core>, slot: usize, first: Connected) {
    let mut conn = Some(first);
    let mut failures = 0u32;
    loop {
        if core.is_stopped() {
            return;
        }
        let c = match conn.take() {
            Some(c) => c,
            None => match core.start_worker(slot).await {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    // A failing worker_init, or a start that keeps failing, breaks the pool
                    // rather than leaving its callers waiting forever.
                    if e.is_init() || failures >= 5 {
                        core.break_pool(e);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20 << failures)).await;
                    continue;
                }
            },
        };
        match serve(&core, slot, c).await {
            Ended::Done | Ended::Stopped => return,
            Ended::Died => {}
        }
    }
}
