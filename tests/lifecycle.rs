//! Dropping and shutting down: no worker outlives its pool, cancellation reaches workers.
mod common;
use std::future::IntoFuture;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use futures_util::{StreamExt, stream};

fn announce_then_hang(path: String) -> u64 {
    signal(&path);
    park_forever()
}

fn pid(_: u32) -> u32 {
    std::process::id()
}

fn slow_identity(x: u64) -> u64 {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_millis(1) {}
    x
}

each_method! {
    processes async fn dropping_the_pool_kills_and_reaps_its_workers(m: StartMethod) {
        let pool = pool(m, 2).await;
        let pids: Vec<u32> = pool.worker_pids().into_iter().map(Option::unwrap).collect();
        let sig = Signal::new();
        let path = sig.path.to_str().unwrap().to_owned();
        let hung = tokio::spawn(pool.apply(announce_then_hang, path).into_future());
        sig.recv().await;
        drop(pool);
        assert!(hung.await.unwrap().unwrap_err().is_closed());
        for p in pids {
            wait_gone(p).await;
        }
    }

    processes async fn dropping_an_apply_kills_the_worker_running_it(m: StartMethod) {
        let pool = pool(m, 1).await;
        let sig = Signal::new();
        let path = sig.path.to_str().unwrap().to_owned();
        let hung = tokio::spawn(pool.apply(announce_then_hang, path).into_future());
        let victim = sig.recv().await;
        hung.abort();
        let _ = hung.await;
        wait_gone(victim).await;
        // A fresh worker took its place.
        let now = pool.apply(pid, 0).await.unwrap();
        assert_ne!(now, victim);
        pool.shutdown().await.unwrap();
    }

    processes async fn dropping_a_stream_cancels_what_it_queued(m: StartMethod) {
        let pool = pool(m, 1).await;
        let sig = Signal::new();
        let path = sig.path.to_str().unwrap().to_owned();
        let mut s = pool.map_stream(announce_then_hang, stream::iter(vec![path; 10])).chunk_size(1);
        tokio::select! {
            _ = s.next() => unreachable!("the task never finishes"),
            _ = sig.recv() => {}
        }
        drop(s);
        // Queued tasks are gone and the running one was killed: the pool is free again.
        assert_eq!(pool.map(pid, 0..4u32).await.unwrap().len(), 4);
        pool.shutdown().await.unwrap();
    }

    async fn shutdown_waits_for_every_worker_to_leave(m: StartMethod) {
        let pool = pool(m, 2).await;
        assert_eq!(pool.map(slow_identity, 0..200u64).await.unwrap().len(), 200);
        let pids = pool.worker_pids();
        assert_eq!(pool.shutdown().await.unwrap().len(), 2);
        // No waiting here: shutdown returns only once every worker has ended and been reaped.
        for p in pids.into_iter().flatten() {
            assert!(is_gone(p), "worker {p} outlived shutdown");
        }
    }
}

/// The owner of a pool is SIGKILLed: its workers (and forkserver) must die with it.
#[test]
fn workers_die_with_a_sigkilled_owner() {
    if let Ok(method) = std::env::var("AMPIRE_TEST_OWNER") {
        return be_owner(&method);
    }
    for method in ["spawn", "fork", "forkserver"] {
        let mut owner = Command::new(std::env::current_exe().unwrap())
            .args([
                "workers_die_with_a_sigkilled_owner",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("AMPIRE_TEST_OWNER", method)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = BufReader::new(owner.stdout.take().unwrap())
            .lines()
            .map(Result::unwrap)
            .find_map(|l| l.split_once("pids ").map(|(_, p)| p.trim().to_owned()))
            .expect("the owner reports its workers");
        let pids: Vec<u32> = line.split(',').map(|p| p.parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        owner.kill().unwrap();
        owner.wait().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for p in pids {
            rt.block_on(wait_gone(p));
        }
    }
}

fn be_owner(method: &str) {
    ampire::init();
    let method = match method {
        "spawn" => StartMethod::Spawn,
        "fork" => StartMethod::Fork,
        _ => StartMethod::Forkserver,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = pool(method, 2).await;
        let pids: Vec<String> = pool
            .worker_pids()
            .into_iter()
            .map(|p| p.unwrap().to_string())
            .collect();
        println!("pids {}", pids.join(","));
        std::future::pending::<()>().await;
    });
}
