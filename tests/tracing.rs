//! What a pool tells `tracing`: a span per pool and per call, the workers' lives as events at
//! their levels (a death at WARN, with how the worker died), and nothing per task.
mod common;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// An event as the test reads it: its level, its message and fields, and the fields of the
/// spans it is in (innermost first).
#[derive(Clone, Debug)]
struct Seen {
    level: Level,
    text: String,
    spans: Vec<(String, String)>,
}

impl Seen {
    fn in_pool(&self, name: &str) -> bool {
        self.spans
            .iter()
            .any(|(n, f)| n == "ampire.pool" && f.contains(&format!("name={name} ")))
    }

    fn says(&self, what: &str) -> bool {
        self.text.starts_with(&format!("message={what} "))
    }
}

/// A span's name, fields and parent.
type SpanInfo = (String, String, Option<u64>);

/// Keeps every span and every event.
#[derive(Default)]
struct Keeper {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, SpanInfo>>,
    events: Mutex<Vec<Seen>>,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={} ", field.name(), value);
    }
}

impl Subscriber for &'static Keeper {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields(String::new());
        span.record(&mut fields);
        let parent = span.parent().map(Id::into_u64);
        let name = span.metadata().name().to_owned();
        self.spans
            .lock()
            .unwrap()
            .insert(id, (name, fields.0, parent));
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let spans = {
            let all = self.spans.lock().unwrap();
            let mut chain = Vec::new();
            let mut at = event.parent().map(Id::into_u64);
            while let Some(id) = at {
                let Some((name, fields, parent)) = all.get(&id) else {
                    break;
                };
                chain.push((name.clone(), fields.clone()));
                at = *parent;
            }
            chain
        };
        let seen = Seen {
            level: *event.metadata().level(),
            text: fields.0,
            spans,
        };
        self.events.lock().unwrap().push(seen);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn keeper() -> &'static Keeper {
    static KEEPER: OnceLock<&'static Keeper> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let keeper: &'static Keeper = Box::leak(Box::default());
        tracing::subscriber::set_global_default(keeper).expect("the only subscriber");
        keeper
    })
}

/// The events of pool `name` so far.
fn events_of(name: &str) -> Vec<Seen> {
    keeper()
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.in_pool(name))
        .cloned()
        .collect()
}

/// Waits until pool `name` logged an event `what` matches (the pool logs some from its own
/// tasks, a moment after the call that caused them returned).
async fn until(name: &str, what: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = events_of(name).into_iter().find(|e| what(e)) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            events_of(name)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn triple(x: u64) -> u64 {
    x * 3
}

fn kill_self_at_3(x: u64) -> u64 {
    if x == 3 {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    x
}

fn hang_at_3(w: &mut Worker<'_>, x: u64) -> u64 {
    if x == 3 {
        while !w.is_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    x
}

each_method! {
    async fn a_pool_logs_its_life_and_its_workers_lives(m: StartMethod) {
        keeper();
        let name = format!("traced-{m}");
        let pool = AsyncPool::builder().workers(2).start_method(m).name(&name)
            .task_timeout(Duration::from_secs(5)).build().await.unwrap();
        let started = until(&name, |e| e.says("pool started")).await;
        assert_eq!(started.level, Level::INFO);
        assert!(started.text.contains("workers=2 "), "{started:?}");
        let pool_span = &started.spans[0];
        assert!(pool_span.1.contains(&format!("method={m} ")), "{pool_span:?}");
        let workers: Vec<Seen> = events_of(&name).into_iter().filter(|e| e.says("worker started")).collect();
        assert_eq!(workers.len(), 2, "{workers:#?}");
        assert!(workers.iter().all(|e| e.level == Level::DEBUG && e.text.contains("replacing=false ")));

        // A thousand tasks: a call's span and its end, and not one event per task.
        let before = events_of(&name).len();
        assert_eq!(pool.map(triple, 0..1000u64).chunk_size(1).await.unwrap().len(), 1000);
        let ended = until(&name, |e| e.says("call ended")).await;
        assert_eq!(ended.level, Level::DEBUG);
        assert!(ended.text.contains("how=done ") && ended.text.contains("done=1000 "), "{ended:?}");
        assert_eq!(ended.spans[0].0, "ampire.call");
        assert!(ended.spans[0].1.contains("kind=map ") && ended.spans[0].1.contains("tests/tracing.rs:"), "{ended:?}");
        assert_eq!(events_of(&name).len() - before, 1, "{:#?}", &events_of(&name)[before..]);

        // An `apply` is one task: its call's end is logged at TRACE only.
        let before = events_of(&name).len();
        for x in 0..20u64 {
            assert_eq!(pool.apply(triple, x).await.unwrap(), 3 * x);
        }
        let ended = |e: &Seen| e.says("call ended") && e.spans[0].1.contains("kind=apply ");
        until(&name, |_| events_of(&name)[before..].iter().filter(|e| ended(e)).count() == 20).await;
        let applied = &events_of(&name)[before..];
        assert!(applied.iter().all(|e| e.level == Level::TRACE && ended(e)), "{applied:#?}");

        // A worker that dies (or, a thread, runs past its deadline): a warning saying how, and
        // its replacement.
        if m.is_process() {
            let e = pool.map(kill_self_at_3, 0..6u64).chunk_size(1).await.unwrap_err();
            assert_eq!(e.signal(), Some(9));
            let death = until(&name, |e| e.says("worker ended")).await;
            assert_eq!(death.level, Level::WARN);
            assert!(death.text.contains("cause=died "), "{death:?}");
            assert!(death.text.contains("how=was killed by signal 9 (SIGKILL), peak RSS "), "{death:?}");
        } else {
            let e = pool.map_with(hang_at_3, 0..6u64).chunk_size(1).task_timeout(Duration::from_millis(100)).await.unwrap_err();
            assert!(e.is_timeout(), "{e}");
            let death = until(&name, |e| e.says("worker ended")).await;
            assert_eq!(death.level, Level::WARN);
            assert!(death.text.contains("cause=timed_out "), "{death:?}");
        }
        let replaced = until(&name, |e| e.says("worker started") && e.text.contains("replacing=true ")).await;
        assert_eq!(replaced.level, Level::DEBUG);

        // Shutdown: each worker's exit, then the pool's.
        pool.shutdown().await.unwrap();
        let events = events_of(&name);
        assert_eq!(events.iter().filter(|e| e.says("worker exited")).count(), 2, "{events:#?}");
        assert!(events.last().unwrap().says("pool shut down"), "{events:#?}");
        assert!(events.iter().all(|e| e.level <= Level::DEBUG || ended(e)), "{events:#?}");
    }
}
