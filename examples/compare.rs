//! Run with: cargo run --release --example compare -- --workload W1 --impl ampire --method fork --reps 1
//!
//! The Rust side of the side-by-side comparison driven by `scripts/compare/run.py`: runs one
//! workload with one implementation and prints one JSON line per measurement on stdout. The
//! contract (workloads, sizes, metrics) is in `scripts/compare/README.md`.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use ampire::{AsyncPool, StartMethod, Worker};

struct Args {
    workload: String,
    imp: String,
    method: String,
    reps: usize,
    quick: bool,
}

fn parse() -> Args {
    let mut a = Args {
        workload: String::new(),
        imp: "ampire".into(),
        method: "forkserver".into(),
        reps: 1,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--workload" => a.workload = it.next().unwrap_or_default(),
            "--impl" => a.imp = it.next().unwrap_or_default(),
            "--method" => a.method = it.next().unwrap_or_default(),
            "--reps" => a.reps = it.next().and_then(|r| r.parse().ok()).unwrap_or(1),
            "--quick" => a.quick = true,
            other => fail(&format!("unknown argument {other}")),
        }
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("compare: {msg}");
    std::process::exit(2)
}

fn not_applicable(msg: &str) -> ! {
    eprintln!("compare: not applicable: {msg}");
    std::process::exit(3)
}

fn emit(a: &Args, workload: &str, metric: &str, value: f64) {
    println!(
        "{{\"workload\":\"{workload}\",\"impl\":\"{}\",\"method\":\"{}\",\"metric\":\"{metric}\",\"value\":{value}}}",
        a.imp, a.method
    );
}

fn method(a: &Args) -> StartMethod {
    match a.method.as_str() {
        "threading" => StartMethod::Threading,
        "spawn" => StartMethod::Spawn,
        "fork" => StartMethod::Fork,
        "forkserver" => StartMethod::Forkserver,
        m => fail(&format!("unknown method {m}")),
    }
}

fn main() {
    let t = Instant::now();
    ampire::init(); // workers divert here, before any argument parsing
    let init_time = t.elapsed();
    let a = parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..a.reps {
        match a.workload.as_str() {
            "W1" => w1_w2(&a, &rt, if a.quick { 100_000 } else { 1_000_000 }, None),
            "W2" => w1_w2(&a, &rt, if a.quick { 10_000 } else { 100_000 }, Some(1)),
            "W3" => w3(&a, &rt, init_time),
            "W4" => w4(&a, &rt),
            "W5" => w5(&a, &rt),
            "W6" => w6(&a, &rt),
            "W7" | "W7-numerical" | "W7-stateful" | "W7-init" => w7(&a, &rt),
            "F" => floors(&a),
            w => fail(&format!("unknown workload {w}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

fn double(x: u64) -> u64 {
    x * 2
}

fn worker_of(w: &mut Worker<'_>, _: u32) -> usize {
    w.id()
}

/// A 2-worker pool in which both workers have run a task.
async fn warm_pool(m: StartMethod) -> AsyncPool {
    let mut b = AsyncPool::builder().workers(2).start_method(m);
    // Settings an A/B run may turn on (scripts/compare/ab.py --b-env ...): what they cost.
    if let Some(ms) = env_number("AMPIRE_BENCH_TASK_TIMEOUT_MS") {
        b = b.task_timeout(Duration::from_millis(ms));
    }
    if let Some(n) = env_number("AMPIRE_BENCH_LIFESPAN") {
        b = b.worker_lifespan(n);
    }
    if env_number("AMPIRE_BENCH_INSIGHTS") == Some(1) {
        b = b.enable_insights(true);
    }
    // Workers through ssh (`scripts/compare/ssh_loopback.py`): the host, then ssh's options, one
    // per line.
    if let Ok(ssh) = std::env::var("AMPIRE_BENCH_SSH") {
        let mut words = ssh.lines();
        let host = words.next().unwrap_or("127.0.0.1").to_owned();
        let launcher = words.fold(ampire::Launcher::ssh([host]), |l, o| l.option(o));
        b = b.launcher(launcher);
    }
    if progress_bars() {
        // Drawn in full, as on a terminal, into one that discards what it is sent.
        let sink = indicatif::ProgressDrawTarget::term_like(Box::new(Sink));
        b = b.__draw_bars_to(sink);
    }
    let pool = b.build().await.unwrap();
    warm(&pool).await;
    pool
}

/// Whether W1 and W2 show a progress bar (`AMPIRE_BENCH_PROGRESS=1`).
fn progress_bars() -> bool {
    env_number("AMPIRE_BENCH_PROGRESS") == Some(1)
}

/// A terminal of 100 columns that discards what is drawn on it.
#[derive(Debug)]
struct Sink;

impl indicatif::TermLike for Sink {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        black_box(s);
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        black_box(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

async fn warm(pool: &AsyncPool) {
    loop {
        let ids = pool
            .map_with(worker_of, 0..8u32)
            .chunk_size(1)
            .await
            .unwrap();
        if ids.contains(&0) && ids.contains(&1) {
            return;
        }
    }
}

fn rayon_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
}

/// Default chunk size used by the `spawn_blocking` baseline: the same rule as ampire's.
fn chunks_of(n: usize) -> usize {
    n.div_ceil(2 * 64).max(1)
}

/// Runs `f` over `items` with one `spawn_blocking` per chunk, at most 2 threads.
async fn blocking_map<A: Send + 'static, R: Send + 'static>(
    items: Vec<A>,
    chunk: usize,
    f: fn(A) -> R,
) -> Vec<R> {
    let mut handles = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        let part: Vec<A> = it.by_ref().take(chunk).collect();
        handles.push(tokio::task::spawn_blocking(move || {
            part.into_iter().map(f).collect::<Vec<R>>()
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// W1 / W2: trivial tasks.

fn w1_w2(a: &Args, rt: &tokio::runtime::Runtime, n: u64, chunk: Option<usize>) {
    let name = if chunk.is_some() { "W2" } else { "W1" };
    let secs = match a.imp.as_str() {
        "ampire" => rt.block_on(async {
            let pool = warm_pool(method(a)).await;
            let t = Instant::now();
            let call = pool.map(double, 0..n).progress_bar(progress_bars());
            let out = match chunk {
                Some(c) => call.chunk_size(c).await,
                None => call.await,
            }
            .unwrap();
            let took = t.elapsed();
            assert_eq!(out.last(), Some(&(2 * (n - 1))));
            drop(pool);
            took
        }),
        "rayon" => {
            use rayon::prelude::*;
            let pool = rayon_pool();
            pool.install(|| (0..100u64).into_par_iter().map(double).sum::<u64>());
            let t = Instant::now();
            let out: Vec<u64> = pool.install(|| match chunk {
                Some(c) => (0..n as usize)
                    .into_par_iter()
                    .with_max_len(c)
                    .map(|x| double(x as u64))
                    .collect::<Vec<u64>>(),
                None => (0..n).into_par_iter().map(double).collect(),
            });
            let took = t.elapsed();
            assert_eq!(out.last(), Some(&(2 * (n - 1))));
            took
        }
        "spawn_blocking" => rt.block_on(async {
            let items: Vec<u64> = (0..n).collect();
            let c = chunk.unwrap_or_else(|| chunks_of(n as usize));
            blocking_map((0..4u64).collect(), 1, double).await;
            let t = Instant::now();
            let out = blocking_map(items, c, double).await;
            let took = t.elapsed();
            assert_eq!(out.last(), Some(&(2 * (n - 1))));
            took
        }),
        i => fail(&format!("unknown impl {i}")),
    };
    emit(a, name, "tasks_per_s", n as f64 / secs.as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// W3: start two workers, get one result, shut down.

fn answer(x: u64) -> u64 {
    x + 1
}

fn w3(a: &Args, rt: &tokio::runtime::Runtime, init_time: Duration) {
    let took = match a.imp.as_str() {
        "ampire" => rt.block_on(async {
            let m = method(a);
            let t = Instant::now();
            let pool = AsyncPool::builder()
                .workers(2)
                .start_method(m)
                .build()
                .await
                .unwrap();
            assert_eq!(pool.apply(answer, 41).await.unwrap(), 42);
            pool.shutdown().await.unwrap();
            t.elapsed()
        }),
        "rayon" => {
            let t = Instant::now();
            let pool = rayon_pool();
            assert_eq!(pool.install(|| answer(41)), 42);
            drop(pool);
            t.elapsed()
        }
        "spawn_blocking" => {
            let t = Instant::now();
            let rt = tokio::runtime::Builder::new_current_thread()
                .max_blocking_threads(2)
                .build()
                .unwrap();
            let got = rt.block_on(async { tokio::task::spawn_blocking(|| answer(41)).await });
            assert_eq!(got.unwrap(), 42);
            rt.shutdown_timeout(Duration::from_secs(10));
            t.elapsed()
        }
        i => fail(&format!("unknown impl {i}")),
    };
    emit(a, "W3", "latency_ms", took.as_secs_f64() * 1e3);
    if a.imp == "ampire" && a.method == "forkserver" {
        eprintln!("compare: latency_cold_ms adds the forkserver start in ampire::init()");
        emit(
            a,
            "W3",
            "latency_cold_ms",
            (took + init_time).as_secs_f64() * 1e3,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// W4: CPU-bound tasks of about 10 ms.

/// Never inlined: the serial loop and the workers run the very same machine code, so a speedup
/// measures the pool, not how the optimiser happened to lay out two copies of the loop.
#[inline(never)]
fn spin(iters: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..iters {
        x = black_box(x ^ (i >> 3)).wrapping_add(i);
    }
    x
}

/// Iterations of `spin` that take about `target`.
fn calibrate(target: Duration) -> u64 {
    let mut iters = 1_000u64;
    loop {
        let t = Instant::now();
        spin(iters);
        let took = t.elapsed();
        if took >= Duration::from_millis(20) {
            return (iters as f64 * target.as_secs_f64() / took.as_secs_f64()) as u64;
        }
        iters *= 2;
    }
}

fn w4(a: &Args, rt: &tokio::runtime::Runtime) {
    let n = if a.quick { 40 } else { 200 };
    let iters = calibrate(Duration::from_millis(10));
    let inputs = vec![iters; n];
    let t = Instant::now();
    let serial: Vec<u64> = inputs.iter().copied().map(spin).collect();
    let serial_time = t.elapsed();
    let pool_time = match a.imp.as_str() {
        "ampire" => rt.block_on(async {
            let pool = warm_pool(method(a)).await;
            let t = Instant::now();
            let out = pool.map(spin, inputs.clone()).await.unwrap();
            let took = t.elapsed();
            assert_eq!(out, serial);
            took
        }),
        "rayon" => {
            use rayon::prelude::*;
            let pool = rayon_pool();
            pool.install(|| (0..100u64).into_par_iter().map(double).sum::<u64>());
            let t = Instant::now();
            let out: Vec<u64> = pool.install(|| inputs.par_iter().copied().map(spin).collect());
            let took = t.elapsed();
            assert_eq!(out, serial);
            took
        }
        "spawn_blocking" => rt.block_on(async {
            blocking_map((0..4u64).collect(), 1, double).await;
            let t = Instant::now();
            let out = blocking_map(inputs.clone(), chunks_of(n), spin).await;
            let took = t.elapsed();
            assert_eq!(out, serial);
            took
        }),
        i => fail(&format!("unknown impl {i}")),
    };
    emit(
        a,
        "W4",
        "speedup",
        serial_time.as_secs_f64() / pool_time.as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------------------------
// W5: 1 MiB payloads.

/// A byte buffer that serialises as bytes (one copy), not element by element.
#[derive(Debug)]
struct Payload(Vec<u8>);

impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

fn payload_len(p: Payload) -> usize {
    p.0.len()
}

fn w5(a: &Args, rt: &tokio::runtime::Runtime) {
    let n = if a.quick { 100 } else { 1_000 };
    let mib = 1usize << 20;
    let make = || -> Vec<Payload> {
        (0..n)
            .map(|i| {
                let mut v = vec![1u8; mib];
                v[..4].copy_from_slice(&(i as u32).to_le_bytes());
                Payload(v)
            })
            .collect()
    };
    let took = match a.imp.as_str() {
        "ampire" => rt.block_on(async {
            let pool = warm_pool(method(a)).await;
            let buffers = make();
            let t = Instant::now();
            let lens = pool.map(payload_len, buffers).await.unwrap();
            let took = t.elapsed();
            assert_eq!(lens.iter().sum::<usize>(), n * mib);
            took
        }),
        "rayon" => {
            use rayon::prelude::*;
            let pool = rayon_pool();
            let buffers = make();
            let t = Instant::now();
            let lens: Vec<usize> =
                pool.install(|| buffers.into_par_iter().map(payload_len).collect());
            let took = t.elapsed();
            assert_eq!(lens.iter().sum::<usize>(), n * mib);
            took
        }
        "spawn_blocking" => rt.block_on(async {
            let buffers = make();
            let t = Instant::now();
            let lens = blocking_map(buffers, chunks_of(n), payload_len).await;
            let took = t.elapsed();
            assert_eq!(lens.iter().sum::<usize>(), n * mib);
            took
        }),
        i => fail(&format!("unknown impl {i}")),
    };
    emit(
        a,
        "W5",
        "gb_per_s",
        (n * mib) as f64 / took.as_secs_f64() / 1e9,
    );
}

// ---------------------------------------------------------------------------------------------
// W6: Fork with a 1 GiB shared object.

fn read_all(w: &mut Worker<'_, Vec<u8>>, _: u32) -> u64 {
    w.shared().iter().map(|&b| u64::from(b == 2)).sum()
}

/// `Pss` and `Private_*` of a process, in KiB.
fn smaps(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

fn w6(a: &Args, rt: &tokio::runtime::Runtime) {
    if a.imp != "ampire" || a.method != "fork" {
        not_applicable("W6 measures fork inheritance only");
    }
    let size = if a.quick { 256usize << 20 } else { 1 << 30 };
    rt.block_on(async {
        let object = vec![1u8; size];
        let me = std::process::id();
        let (parent_before, _) = smaps(me);
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(StartMethod::Fork)
            .order_tasks(true)
            .shared(object)
            .build()
            .await
            .unwrap();
        // Task i goes to worker i: each worker reads every byte of the object.
        let twos = pool
            .map_with(read_all, 0..2u32)
            .chunk_size(1)
            .await
            .unwrap();
        assert_eq!(twos, vec![0, 0]);
        let pids: Vec<u32> = pool.worker_pids().into_iter().map(Option::unwrap).collect();
        let (parent_after, _) = smaps(me);
        let workers: Vec<(u64, u64)> = pids.iter().map(|&p| smaps(p)).collect();
        let pss_workers: u64 = workers.iter().map(|w| w.0).sum();
        let uss_workers: u64 = workers.iter().map(|w| w.1).sum();
        let added = (parent_after + pss_workers).saturating_sub(parent_before);
        let mib = |kib: u64| kib as f64 / 1024.0;
        emit(a, "W6", "pss_mib", mib(pss_workers));
        emit(
            a,
            "W6",
            "pss_pct",
            mib(pss_workers) * 1048576.0 / size as f64 * 100.0,
        );
        emit(a, "W6", "uss_mib", mib(uss_workers));
        emit(a, "W6", "added_mib", mib(added));
        emit(
            a,
            "W6",
            "added_pct",
            mib(added) * 1048576.0 / size as f64 * 100.0,
        );
        drop(pool);
    });
}

// ---------------------------------------------------------------------------------------------
// W7: MPIRE's benchmark suite, same shape.

fn w7(a: &Args, rt: &tokio::runtime::Runtime) {
    if a.imp != "ampire" {
        not_applicable("W7 compares pools with worker state and exit functions");
    }
    let m = method(a);
    let all = a.workload == "W7";
    if all || a.workload == "W7-numerical" {
        w7_numerical(a, rt, m);
    }
    if all || a.workload == "W7-stateful" {
        w7_stateful(a, rt, m);
    }
    if all || a.workload == "W7-init" {
        w7_init(a, rt, m);
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Image {
    n: usize,
    /// Read in place from shared memory by `Spawn` and `Forkserver` workers, not decoded.
    px: ampire::SharedSlice<f64>,
}

fn make_image(n: usize) -> Image {
    let mut px = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            px[i * n + j] = ((31 * i + 17 * j) % 256) as f64 / 255.0;
        }
    }
    Image { n, px: px.into() }
}

/// Full 2-D convolution with filter `k` (scipy's `convolve2d`, output `(n+3) x (n+3)`), then
/// every 5th row and column. Each output row is computed in turn from the four image rows that
/// reach it, so the full output never needs to be held: same arithmetic, little memory.
#[inline(never)]
fn convolve(img: &Image, k: u32) -> Vec<f64> {
    let n = img.n;
    let mut f = [[0.0f64; 4]; 4];
    for (a, row) in f.iter_mut().enumerate() {
        for (b, v) in row.iter_mut().enumerate() {
            *v = ((16 * k as usize + 4 * a + b + 1) as f64).sin();
        }
    }
    let m = n + 3;
    let mut row = vec![0.0; m];
    let mut kept = Vec::with_capacity(m.div_ceil(5) * m.div_ceil(5));
    for r in 0..m {
        row.iter_mut().for_each(|v| *v = 0.0);
        // out[r][j + b] += f[a][b] * img[r - a][j]
        for (a, frow) in f.iter().enumerate() {
            let Some(i) = r.checked_sub(a).filter(|&i| i < n) else {
                continue;
            };
            let src = &img.px[i * n..(i + 1) * n];
            for (b, &fv) in frow.iter().enumerate() {
                for (d, &s) in row[b..b + n].iter_mut().zip(src) {
                    *d += fv * s;
                }
            }
        }
        if r % 5 == 0 {
            kept.extend(row.iter().step_by(5));
        }
    }
    kept
}

fn convolve_task(w: &mut Worker<'_, Image>, k: u32) -> Vec<f64> {
    convolve(w.shared(), k)
}

fn w7_numerical(a: &Args, rt: &tokio::runtime::Runtime, m: StartMethod) {
    let (n, filters) = if a.quick { (600, 10) } else { (1500, 20) };
    let t = Instant::now();
    let img = make_image(n);
    let serial: Vec<Vec<f64>> = (0..filters).map(|k| convolve(&img, k)).collect();
    let serial_time = t.elapsed();
    drop(img);
    let pool_time = rt.block_on(async {
        let t = Instant::now();
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(m)
            .shared(make_image(n))
            .build()
            .await
            .unwrap();
        let built = t.elapsed();
        let out = pool
            .map_with(convolve_task, 0..filters)
            .chunk_size(1)
            .await
            .unwrap();
        let mapped = t.elapsed();
        pool.shutdown().await.unwrap();
        let took = t.elapsed();
        eprintln!("compare: W7-numerical serial {serial_time:?}, built {built:?}, mapped {mapped:?}, shut down {took:?}");
        assert_eq!(out, serial);
        took
    });
    emit(
        a,
        "W7-numerical",
        "ratio_to_ideal",
        pool_time.as_secs_f64() / (serial_time.as_secs_f64() / 2.0),
    );
    emit(a, "W7-numerical", "pool_ms", pool_time.as_secs_f64() * 1e3);
}

type Prefixes = HashMap<Vec<u8>, u32>;

#[inline(never)]
fn count_prefixes(counts: &mut Prefixes, doc: &[[u8; 20]]) {
    for word in doc {
        for i in 1..20 {
            *counts.entry(word[..i].to_vec()).or_default() += 1;
        }
    }
}

fn popular(counts: &Prefixes) -> HashSet<Vec<u8>> {
    counts
        .iter()
        .filter(|(_, n)| **n > 3)
        .map(|(p, _)| p.clone())
        .collect()
}

fn new_counts(_: &Worker<'_>) -> Prefixes {
    Prefixes::new()
}

fn add_document(w: &mut Worker<'_, (), Prefixes>, doc: Vec<[u8; 20]>) {
    count_prefixes(w.state(), &doc);
}

fn popular_prefixes(w: &mut Worker<'_, (), Prefixes>) -> HashSet<Vec<u8>> {
    popular(w.state())
}

fn documents(count: usize) -> Vec<Vec<[u8; 20]>> {
    let mut x = 42u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|d| {
            let words = if d % 2 == 0 { 1_500 } else { 500 };
            (0..words)
                .map(|_| {
                    let mut w = [0u8; 20];
                    for b in &mut w {
                        *b = (next() % 4) as u8 + b'a';
                    }
                    w
                })
                .collect()
        })
        .collect()
}

fn w7_stateful(a: &Args, rt: &tokio::runtime::Runtime, m: StartMethod) {
    let docs = documents(if a.quick { 30 } else { 100 });
    let t = Instant::now();
    let mut counts = Prefixes::new();
    for d in &docs {
        count_prefixes(&mut counts, d);
    }
    let serial = popular(&counts);
    let serial_time = t.elapsed();
    let pool_time = rt.block_on(async {
        let t = Instant::now();
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(m)
            .worker_init(new_counts)
            .worker_exit(popular_prefixes)
            .build()
            .await
            .unwrap();
        pool.map_unordered_with(add_document, docs.clone())
            .chunk_size(1)
            .await
            .unwrap();
        let union: HashSet<Vec<u8>> = pool
            .shutdown()
            .await
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let took = t.elapsed();
        assert!(!union.is_empty() && union.is_subset(&serial));
        took
    });
    emit(
        a,
        "W7-stateful",
        "ratio_to_ideal",
        pool_time.as_secs_f64() / (serial_time.as_secs_f64() / 2.0),
    );
    emit(a, "W7-stateful", "pool_ms", pool_time.as_secs_f64() * 1e3);
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct InitCost {
    init_iters: u64,
    task_iters: u64,
}

fn build_model(cost: InitCost) -> Vec<i64> {
    black_box(spin(cost.init_iters));
    (0..1i64 << 20).collect()
}

fn model_init(w: &Worker<'_, InitCost>) -> Vec<i64> {
    build_model(*w.shared())
}

fn predict(model: &[i64], cost: InitCost, idx: u64) -> i64 {
    black_box(spin(cost.task_iters));
    let s = ((idx * 7919) % ((1 << 20) - 1024)) as usize;
    model[s..s + 1024].iter().sum::<i64>() + idx as i64
}

fn predict_task(w: &mut Worker<'_, InitCost, Vec<i64>>, idx: u64) -> i64 {
    let cost = *w.shared();
    predict(w.state(), cost, idx)
}

fn w7_init(a: &Args, rt: &tokio::runtime::Runtime, m: StartMethod) {
    let (init_ms, runs, tasks) = if a.quick { (100, 4, 10) } else { (200, 10, 20) };
    let cost = InitCost {
        init_iters: calibrate(Duration::from_millis(init_ms)),
        task_iters: calibrate(Duration::from_millis(5)),
    };
    let t = Instant::now();
    let model = build_model(cost);
    let serial: Vec<i64> = (0..runs)
        .flat_map(|_| (0..tasks).map(|i| predict(&model, cost, i)))
        .collect();
    let serial_time = t.elapsed();
    let pool_time = rt.block_on(async {
        let t = Instant::now();
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(m)
            .shared(cost)
            .worker_init(model_init)
            .build()
            .await
            .unwrap();
        let built = t.elapsed();
        let mut out = Vec::new();
        for _ in 0..runs {
            out.extend(
                pool.map_unordered_with(predict_task, 0..tasks)
                    .await
                    .unwrap(),
            );
        }
        let mapped = t.elapsed();
        pool.shutdown().await.unwrap();
        let took = t.elapsed();
        eprintln!("compare: W7-init serial {serial_time:?}, built {built:?}, mapped {mapped:?}, shut down {took:?}");
        out.sort_unstable();
        let mut want = serial.clone();
        want.sort_unstable();
        assert_eq!(out, want);
        took
    });
    emit(
        a,
        "W7-init",
        "ratio_to_ideal",
        pool_time.as_secs_f64() / (serial_time.as_secs_f64() / 2.0),
    );
    emit(a, "W7-init", "pool_ms", pool_time.as_secs_f64() * 1e3);
}

// ---------------------------------------------------------------------------------------------
// F: what this machine allows, measured without any pool. These bound the workloads above: a
// pool's start and shutdown (W3) is a chain of hand-offs between threads and processes, each
// one a wake-up; moving results or a shared object into another process (W7) writes pages that
// process never had.

fn floors(a: &Args) {
    if a.imp != "machine" {
        not_applicable("F measures the machine, not a pool");
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // A hand-off and its reply between two threads over pipes, as between a pool and a worker:
    // on two CPUs after the other side sat idle for 1 ms (each wake-up then finds a halted
    // CPU), on two CPUs back to back, and on one CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rtt = |echo_cpu: usize, idle: bool| {
        pin(0);
        let pipe = || {
            let (r, w) = nix::unistd::pipe().unwrap();
            (std::fs::File::from(r), std::fs::File::from(w))
        };
        let (mut ping_r, mut ping_w) = pipe();
        let (mut pong_r, mut pong_w) = pipe();
        let echo = std::thread::spawn(move || {
            use std::io::{Read, Write};
            pin(echo_cpu);
            let mut b = [0u8; 1];
            while ping_r.read_exact(&mut b).is_ok() && b[0] != 0 {
                pong_w.write_all(&b).unwrap();
            }
        });
        let times = (0..if idle { 50 } else { 2000 })
            .map(|_| {
                use std::io::{Read, Write};
                if idle {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let t = Instant::now();
                ping_w.write_all(&[1]).unwrap();
                let mut b = [0u8; 1];
                pong_r.read_exact(&mut b).unwrap();
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        std::io::Write::write_all(&mut ping_w, &[0]).unwrap();
        echo.join().unwrap();
        median(times)
    };
    let other = (cpus > 1) as usize;
    emit(a, "F", "wake_rtt_idle_us", rtt(other, true));
    emit(a, "F", "wake_rtt_busy_us", rtt(other, false));
    emit(a, "F", "wake_rtt_same_cpu_us", rtt(0, true));
    unpin(cpus);
    // Writing memory this process never touched (every page faulted in), then the same again.
    let size = 256usize << 20;
    let (mut fresh, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut v: Vec<u8> = Vec::with_capacity(size);
        let t = Instant::now();
        v.resize(size, 1);
        fresh.push(size as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        v.fill(2);
        warm.push(size as f64 / t.elapsed().as_secs_f64() / 1e9);
        black_box(&v);
    }
    emit(a, "F", "fresh_write_gb_per_s", median(fresh));
    emit(a, "F", "warm_write_gb_per_s", median(warm));
    // Starting a tiny program and waiting for its end (`posix_spawn`, as ampire's Spawn does).
    let spawns = (0..20)
        .map(|_| {
            let t = Instant::now();
            let status = std::process::Command::new("true").status().unwrap();
            assert!(status.success());
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    emit(a, "F", "spawn_wait_us", median(spawns));
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn unpin(cpus: usize) {
    let mut set = nix::sched::CpuSet::new();
    for c in 0..cpus {
        let _ = set.set(c);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}
