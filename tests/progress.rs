//! Progress bars, as a user sees them: rendered to an in-memory terminal and read back line by
//! line, for a plain map, a failing map, a dropped stream and pools nested in workers under every
//! start method.
mod common;

use std::future::IntoFuture;

use common::*;
use futures_util::{StreamExt, stream};
use indicatif::{InMemoryTerm, ProgressDrawTarget};

fn double(x: u64) -> u64 {
    x * 2
}

/// A terminal of 120 columns that keeps what the bars drew.
fn terminal() -> InMemoryTerm {
    InMemoryTerm::new(40, 120)
}

fn target(term: &InMemoryTerm) -> ProgressDrawTarget {
    ProgressDrawTarget::term_like(Box::new(term.clone()))
}

/// The screen's non-empty lines.
fn lines(term: &InMemoryTerm) -> Vec<String> {
    term.contents()
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

each_method! {
    async fn a_map_ends_with_its_full_count(m: StartMethod) {
        let term = terminal();
        let pool = AsyncPool::builder().workers(2).start_method(m).name("squares")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        let out = pool.map(double, 0..100u64).progress_bar(true).await.unwrap();
        assert_eq!(out.len(), 100);
        let screen = lines(&term);
        assert_eq!(screen.len(), 1, "{screen:?}");
        assert!(screen[0].starts_with("squares map ["), "{screen:?}");
        assert!(screen[0].contains("] 100/100 ("), "{screen:?}");
        assert!(!screen[0].contains("failed"), "{screen:?}");
    }
}

fn fails_at_7(x: u64) -> u64 {
    assert!(x != 7, "seven");
    x
}

/// Runs inside a worker: a pool of its own (of the method `inner` names), whose map shows a bar.
fn inner_map(inner: u8) -> u64 {
    inner_pool_sum(StartMethod::ALL[inner as usize], "inner", true, double)
}

/// One test at a time runs pools inside workers (see tests/nested.rs).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

each_method! {
    async fn a_failing_map_leaves_its_bar_saying_so(m: StartMethod) {
        let term = terminal();
        let pool = AsyncPool::builder().workers(2).start_method(m).name("checks")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        let e = pool.map(fails_at_7, 0..100u64).chunk_size(1).progress_bar(true).await.unwrap_err();
        assert!(e.is_panic());
        let screen = lines(&term);
        assert_eq!(screen.len(), 1, "{screen:?}");
        assert!(screen[0].starts_with("checks map ["), "{screen:?}");
        assert!(screen[0].contains("/100 ("), "{screen:?}");
        assert!(screen[0].ends_with("failed, 1 failed"), "{screen:?}");
    }

    async fn a_dropped_stream_leaves_its_bar_saying_so(m: StartMethod) {
        let term = terminal();
        let pool = AsyncPool::builder().workers(2).start_method(m).name("endless")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        let mut s = pool.map_stream(double, stream::iter(0..)).progress_bar(true);
        for _ in 0..50 {
            s.next().await.unwrap().unwrap();
        }
        drop(s);
        let screen = lines(&term);
        assert_eq!(screen.len(), 1, "{screen:?}");
        // An input of unknown length: a count and a rate, no bar.
        assert!(screen[0].starts_with("endless map_stream "), "{screen:?}");
        assert!(screen[0].contains(" done ("), "{screen:?}");
        assert!(screen[0].ends_with("dropped"), "{screen:?}");
    }

    async fn a_quiet_stream_shows_its_latest_count(m: StartMethod) {
        // Three results in quick succession, then the consumer holds the stream without reading
        // on: the bar catches up with the count it skipped (it shows one at most every 25 ms).
        let term = terminal();
        let pool = AsyncPool::builder().workers(2).start_method(m).name("quiet")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        let mut s = pool.map_stream(double, stream::iter(0..3u64)).chunk_size(1).progress_bar(true);
        for _ in 0..3 {
            s.next().await.unwrap().unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !lines(&term).first().is_some_and(|l| l.contains("] 3/3 (")) {
            assert!(std::time::Instant::now() < deadline, "the bar stays behind: {:?}", lines(&term));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(s);
    }

    async fn a_stream_of_known_length_shows_a_bar(m: StartMethod) {
        let term = terminal();
        let pool = AsyncPool::builder().workers(2).start_method(m).name("known")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        let n = pool.map_stream_unordered(double, stream::iter(0..30u64)).len(30).progress_bar(true).count().await;
        assert_eq!(n, 30);
        let screen = lines(&term);
        assert!(screen[0].starts_with("known map_stream_unordered ["), "{screen:?}");
        assert!(screen[0].contains("] 30/30 ("), "{screen:?}");
    }

    async fn bars_of_pools_nested_in_workers_appear_under_their_parent(m: StartMethod) {
        let _alone = ONE_AT_A_TIME.lock().await;
        let term = terminal();
        let pool = AsyncPool::builder().workers(2).start_method(m).name("outer")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        // One inner pool of each start method, each in a worker of the outer pool.
        let sums = pool.map(inner_map, 0..4u8).chunk_size(1).progress_bar(true).await.unwrap();
        assert_eq!(sums, vec![9900; 4]);
        let screen = lines(&term);
        assert_eq!(screen.len(), 5, "{screen:?}");
        assert!(screen[0].starts_with("outer map ["), "{screen:?}");
        assert!(screen[0].contains("] 4/4 ("), "{screen:?}");
        for line in &screen[1..] {
            assert!(line.starts_with("  inner map (worker "), "{screen:?}");
            assert!(line.contains("] 100/100 ("), "{screen:?}");
        }
        pool.shutdown().await.unwrap();
    }
}

/// Runs inside a worker: a pool of its own whose long map shows a bar, until the worker is
/// killed.
fn endless_inner_map(_: u64) -> u64 {
    block_on_fresh(async {
        let pool = AsyncPool::builder()
            .workers(1)
            .start_method(StartMethod::Threading)
            .name("inner")
            .build()
            .await
            .unwrap();
        let forever = stream::iter(0..).then(|x| async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            x
        });
        pool.map_stream(double, forever)
            .progress_bar(true)
            .count()
            .await as u64
    })
}

each_method! {
    processes async fn a_nested_bar_ends_when_its_worker_dies(m: StartMethod) {
        let _alone = ONE_AT_A_TIME.lock().await;
        let term = terminal();
        let pool = AsyncPool::builder().workers(1).start_method(m).name("outer")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        let call = tokio::spawn(pool.apply(endless_inner_map, 0).task_timeout(std::time::Duration::from_secs(60)).into_future());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !lines(&term).iter().any(|l| l.starts_with("  inner map_stream (worker 0) ")) {
            assert!(std::time::Instant::now() < deadline, "no nested bar: {:?}", lines(&term));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // The worker dies mid-call: no event will close its pool's bar.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pool.worker_pids()[0].unwrap() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(call.await.unwrap().unwrap_err().is_worker_died());
        pool.shutdown().await.unwrap();
        let screen = lines(&term);
        let inner: Vec<&String> = screen.iter().filter(|l| l.contains("inner map_stream")).collect();
        assert_eq!(inner.len(), 1, "{screen:?}");
        assert!(inner[0].ends_with("its worker ended"), "{screen:?}");
    }
}

/// Prints a line on stderr, then answers. (Written to the stream itself: under libtest,
/// `eprintln!` in a thread spawned by a test goes to the test's captured output, and a `Fork`
/// worker is a copy of such a thread.)
fn chatty(x: u64) -> u64 {
    use std::io::Write;
    std::io::stderr()
        .write_all(format!("hello from task {x}\n").as_bytes())
        .unwrap();
    x
}

each_method! {
    processes async fn what_workers_print_comes_above_the_bars(m: StartMethod) {
        let term = terminal();
        let pool = AsyncPool::builder().workers(2).start_method(m).name("talk")
            .__draw_bars_to(target(&term)).build().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let inputs = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let mut out = pool.map_stream(chatty, inputs).progress_bar(true);
        // While the call runs, a worker's line comes above its bar.
        tx.send(0).unwrap();
        assert_eq!(out.next().await.unwrap().unwrap(), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let screen = loop {
            let screen = lines(&term);
            if screen.iter().any(|l| l.ends_with("] hello from task 0")) {
                break screen;
            }
            assert!(std::time::Instant::now() < deadline, "{screen:?}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        assert_eq!(screen.len(), 2, "{screen:?}");
        assert!(screen[0] == "[w0] hello from task 0" || screen[0] == "[w1] hello from task 0", "{screen:?}");
        assert!(screen[1].starts_with("talk map_stream "), "{screen:?}");
        for x in 1..4 {
            tx.send(x).unwrap();
        }
        drop(tx);
        let rest: Vec<u64> = out.map(Result::unwrap).collect().await;
        assert_eq!(rest, [1, 2, 3]);
        // The worker's lines travel through the pool; shutting down waits for them all. Each
        // comes once, whole; the bar that ended stays, once, below the line printed before.
        pool.shutdown().await.unwrap();
        let screen = lines(&term);
        assert_eq!(screen.len(), 5, "{screen:?}");
        let bar = screen.iter().position(|l| l.starts_with("talk map_stream [") && l.contains("] 4/4 (took ")).unwrap_or_else(|| panic!("{screen:?}"));
        let mut said: Vec<&str> = screen.iter().enumerate().filter(|(i, _)| *i != bar).map(|(_, l)| &l[5..]).collect();
        said.sort();
        assert_eq!(said, ["hello from task 0", "hello from task 1", "hello from task 2", "hello from task 3"], "{screen:?}");
        assert!(screen.iter().enumerate().all(|(i, l)| i == bar || l.starts_with("[w0] ") || l.starts_with("[w1] ")), "{screen:?}");
        assert!(screen[0].ends_with("hello from task 0") && bar > 0, "{screen:?}");
    }
}
