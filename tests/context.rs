//! Worker context: worker id, shared objects, per-worker state, init and exit functions.
mod common;
use common::*;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Table {
    weights: Vec<u64>,
}

type Ctx<'a> = Worker<'a, Table, State>;

#[derive(Default)]
struct State {
    seen: u64,
    sum: u64,
}

fn init(w: &Worker<'_, Table, ()>) -> State {
    assert_eq!(w.shared().weights.len(), 1000);
    State::default()
}

fn weigh(w: &mut Ctx<'_>, i: usize) -> u64 {
    let x = w.shared().weights[i];
    let st = w.state();
    st.seen += 1;
    st.sum += x;
    x
}

fn report(w: &mut Ctx<'_>) -> (usize, u64, u64) {
    (w.id(), w.state().seen, w.state().sum)
}

fn panicking_init(w: &Worker<'_, (), ()>) -> u32 {
    if w.id() == 1 {
        panic!("init refuses worker 1");
    }
    0
}

fn id(w: &mut Worker<'_, (), u32>, _: ()) -> usize {
    w.id()
}

/// An exit function that leaves a trace, as one that flushes a file would.
fn append_line(w: &mut Worker<'_, String, ()>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(w.shared())
        .unwrap();
    // One write per line: two workers append to this file at the same time.
    f.write_all(format!("worker {}\n", w.id()).as_bytes())
        .unwrap();
}

fn touch(_: &mut Worker<'_, String, ()>, x: u32) -> u32 {
    x
}

/// An exit result that refuses to be serialised: fine where it is moved (threads), an error
/// where it must cross a process boundary.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct Unsendable(u32);

impl serde::Serialize for Unsendable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value stays where it is"))
    }
}

fn unsendable(w: &mut Worker<'_, (), ()>) -> Unsendable {
    Unsendable(w.id() as u32)
}

each_method! {
    async fn thread_exit_results_are_moved_process_ones_serialised(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).worker_exit(unsendable).build().await.unwrap();
        match pool.shutdown().await {
            Ok(exits) => {
                assert!(!m.is_process(), "a process worker cannot send it");
                assert_eq!(exits, [Unsendable(0), Unsendable(1)]);
            }
            Err(e) => {
                assert!(m.is_process(), "{e}");
                assert!(e.is_codec() && e.to_string().contains("could not serialise the exit result"), "{e}");
            }
        }
    }

    async fn exit_functions_have_finished_when_shutdown_returns(m: StartMethod) {
        let path = std::env::temp_dir().join(format!("ampire-exit-{}-{m:?}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(m)
            .shared(path.to_str().unwrap().to_owned())
            .worker_exit(append_line)
            .build()
            .await
            .unwrap();
        assert_eq!(pool.map_with(touch, 0..10u32).await.unwrap().len(), 10);
        pool.shutdown().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["worker 0", "worker 1"]);
    }

    async fn shared_object_state_and_exit_results(m: StartMethod) {
        let table = Table { weights: (0..1000).map(|i| i * 3).collect() };
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(m)
            .shared(table)
            .worker_init(init)
            .worker_exit(report)
            .build()
            .await
            .unwrap();
        let got = pool.map_with(weigh, 0..1000usize).chunk_size(10).await.unwrap();
        assert_eq!(got, (0..1000u64).map(|i| i * 3).collect::<Vec<_>>());
        let one = pool.apply_with(weigh, 10).await.unwrap();
        assert_eq!(one, 30);
        let exits = pool.shutdown().await.unwrap();
        assert_eq!(exits.len(), 2);
        assert_eq!(exits.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1]);
        // Each worker's state saw its own tasks; together they saw them all, exactly once.
        assert_eq!(exits.iter().map(|e| e.1).sum::<u64>(), 1001);
        assert_eq!(exits.iter().map(|e| e.2).sum::<u64>(), (0..1000u64).map(|i| i * 3).sum::<u64>() + 30);
    }

    async fn a_panicking_worker_init_fails_build(m: StartMethod) {
        let e = AsyncPool::builder().workers(2).start_method(m).worker_init(panicking_init).build().await.unwrap_err();
        assert!(e.is_init() && e.is_panic(), "{e}");
        assert_eq!(e.panic_message(), Some("init refuses worker 1"));
        assert_eq!(e.worker_id(), Some(1));
        assert!(e.to_string().starts_with("worker_init panicked in worker 1"), "{e}");
    }

    async fn worker_ids_are_in_range(m: StartMethod) {
        let pool = AsyncPool::builder().workers(3).start_method(m).worker_init(|_: &Worker<'_>| 0u32).build().await.unwrap();
        let mut ids = pool.map_with(id, vec![(); 300]).chunk_size(1).await.unwrap();
        ids.sort_unstable();
        ids.dedup();
        assert!(ids.iter().all(|&i| i < 3), "{ids:?}");
        pool.shutdown().await.unwrap();
    }
}
