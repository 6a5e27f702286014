//! A worker slot for the pool's whole life: it starts a worker, serves it until it leaves, and
//! replaces it when it dies or retires, under the same id.
//!
//! **Successors.** With a `worker_lifespan`, a worker's end is known in advance: when its
//! remaining tasks would take less than a few start-ups, the slot starts its successor alongside
//! (`Core::sent` says when), so that the successor is ready when the worker retires and the
//! pool keeps its capacity. The retiring worker hands back its unfinished tasks, leaves the slot
//! to the successor at once, and runs its exit function in the background (`Ended::Retired`).
//! A successor still waiting at shutdown has run `worker_init`, so it runs `worker_exit` too.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::Core;
use super::driver::{Ended, serve};
use crate::error::Error;
use crate::start::Connected;

/// Runs worker `slot` for the pool's whole life, replacing it whenever it dies or retires.
pub(super) async fn drive(core: Arc<Core>, slot: usize, first: Connected) {
    let mut conn = Some(first);
    // A worker started ahead of time, to take over from the one serving.
    let mut next: Option<JoinHandle<Result<Connected, Error>>> = None;
    loop {
        if core.is_stopped() {
            return abort(next);
        }
        let c = match conn.take() {
            Some(c) => c,
            // A replacement that cannot start breaks the pool, rather than leaving its callers
            // waiting forever.
            None => match successor(&core, slot, next.take()).await {
                Ok(c) => c,
                Err(e) => {
                    core.break_pool(e);
                    return;
                }
            },
        };
        // What the worker before wanted is not this one's.
        core.successor_wanted(slot);
        let mut served = std::pin::pin!(serve(&core, slot, c));
        let ended = loop {
            let wanted = core.prestart[slot].notified();
            // No successor once the pool shuts down: the worker serving is the slot's last.
            if next.is_none() && core.successor_wanted(slot) && !core.is_closing() {
                let core = core.clone();
                next = Some(tokio::spawn(
                    async move { core.start_slot(slot, false).await },
                ));
            }
            tokio::select! {
                ended = &mut served => break ended,
                _ = wanted, if next.is_none() => {}
            }
        };
        match ended {
            Ended::Stopped => return abort(next),
            Ended::Done => {
                // At shutdown: a successor that started meanwhile leaves too, through its exit
                // function.
                match next.take() {
                    Some(started) => match started.await {
                        Ok(Ok(c)) => conn = Some(c),
                        _ => return,
                    },
                    None => return,
                }
            }
            Ended::Died => core.room_for_a_thread().await,
            Ended::Retired(rest) => core.keep(tokio::spawn(rest)),
        }
    }
}

/// The worker that takes over slot `slot`: the successor started ahead of time, or a new one.
async fn successor(
    core: &Arc<Core>,
    slot: usize,
    started: Option<JoinHandle<Result<Connected, Error>>>,
) -> Result<Connected, Error> {
    match started {
        Some(started) => started.await.unwrap_or_else(|_| Err(Error::closed())),
        None => core.start_slot(slot, false).await,
    }
}

/// Drops a successor: a process worker is killed, a thread leaves as the pool stops.
fn abort(next: Option<JoinHandle<Result<Connected, Error>>>) {
    if let Some(next) = next {
        next.abort();
    }
}
