//! The caveat MPIRE's page spells out for spawn and forkserver: a static the owner changes after
//! `init()` keeps its initial value in `Spawn` and `Forkserver` workers (they start from the
//! program, or from a server forked when `init()` ran), and has the owner's value under
//! `Threading` (the same memory) and `Fork` (a copy of it).
mod common;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;

static SETTING: AtomicU64 = AtomicU64::new(1);

fn read_setting(_: u32) -> u64 {
    SETTING.load(Ordering::Relaxed)
}

each_method! {
    async fn a_static_set_after_init_is_seen_only_where_memory_is_shared_or_copied(m: StartMethod) {
        // `init()` ran (the harness calls it first); every test of this binary sets the same value.
        SETTING.store(42, Ordering::Relaxed);
        let pool = pool(m, 2).await;
        let seen = pool.map(read_setting, 0..8u32).chunk_size(1).await.unwrap();
        let expected = match m {
            StartMethod::Threading | StartMethod::Fork => 42,
            _ => 1,
        };
        assert_eq!(seen, vec![expected; 8], "{m}");
        pool.shutdown().await.unwrap();
    }
}
