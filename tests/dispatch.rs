//! Fair dispatch: no job waits behind a running one while a worker is idle.
mod common;
use std::future::IntoFuture;

use common::*;
use futures_util::StreamExt;

fn quick(x: u64) -> u64 {
    x + 1
}

fn blocked_or_quick((x, announce, gate): (u64, String, String)) -> u64 {
    if x == 0 {
        blocked((announce, gate))
    } else {
        quick(x)
    }
}

fn blocked_at_150((x, announce, gate): (u64, String, String)) -> u64 {
    if x == 150 {
        blocked((announce, gate))
    } else {
        quick(x)
    }
}

each_method! {
    async fn an_apply_never_waits_behind_a_blocked_apply(m: StartMethod) {
        let pool = pool(m, 2).await;
        let sig = Signal::new();
        let announce = sig.path.to_str().unwrap().to_owned();
        for i in 0..40 {
            let gate = gate_path(m, i);
            let first = tokio::spawn(pool.apply(blocked, (announce.clone(), gate.clone())).into_future());
            sig.recv().await;
            // The second goes to the idle worker, not behind the first: it finishes while the
            // first is still blocked (a hang here is the test's timeout).
            assert_eq!(pool.apply(quick, i as u64).await.unwrap(), i as u64 + 1, "round {i}");
            release(&gate);
            assert_eq!(first.await.unwrap().unwrap(), 0);
        }
        pool.shutdown().await.unwrap();
    }

    async fn jobs_queued_behind_a_blocked_task_run_elsewhere(m: StartMethod) {
        // Tiny tasks after a blocked one: whatever the blocked worker took into its pipe is
        // taken back by the other worker, so every one of them finishes while it is blocked.
        let pool = pool(m, 2).await;
        let sig = Signal::new();
        let announce = sig.path.to_str().unwrap().to_owned();
        for round in 0..5 {
            let gate = gate_path(m, 100 + round);
            let inputs = (0..200u64).map(|x| (x, announce.clone(), gate.clone()));
            let mut results = pool
                .map_stream_unordered(blocked_or_quick, futures_util::stream::iter(inputs))
                .chunk_size(1);
            let mut quick_ones = 0;
            let mut started = false;
            while quick_ones < 199 {
                tokio::select! {
                    r = results.next() => {
                        let v = r.unwrap().unwrap();
                        assert!(v > 0, "the blocked task finished before it was released");
                        quick_ones += 1;
                    }
                    _ = sig.recv(), if !started => started = true,
                }
            }
            if !started {
                sig.recv().await;
            }
            release(&gate);
            assert_eq!(results.next().await.unwrap().unwrap(), 0);
            assert!(results.next().await.is_none());
        }
        pool.shutdown().await.unwrap();
    }

    async fn results_before_a_blocked_task_arrive_while_it_is_blocked(m: StartMethod) {
        // By task 150 the tasks are known to be tiny, so a worker may hold their results to
        // send many at once; the worker that then blocks must not keep them.
        let pool = pool(m, 2).await;
        let sig = Signal::new();
        let announce = sig.path.to_str().unwrap().to_owned();
        for round in 0..5 {
            let gate = gate_path(m, 200 + round);
            let inputs = (0..300u64).map(|x| (x, announce.clone(), gate.clone()));
            let mut results = pool
                .map_stream(blocked_at_150, futures_util::stream::iter(inputs))
                .chunk_size(1);
            for x in 0..150u64 {
                assert_eq!(results.next().await.unwrap().unwrap(), x + 1, "round {round}");
            }
            sig.recv().await;
            release(&gate);
            assert_eq!(results.next().await.unwrap().unwrap(), 0);
            for x in 151..300u64 {
                assert_eq!(results.next().await.unwrap().unwrap(), x + 1);
            }
        }
        pool.shutdown().await.unwrap();
    }
}
