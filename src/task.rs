//! Task functions, the worker context they may ask for, and the type-erased entry points that
//! run them inside a worker.
//!
//! A task function must be an `fn` item or a closure that captures nothing: such a type is
//! zero-sized, so the worker can produce its value without receiving anything but the *type*,
//! which the pool names by the offset of a monomorphised entry function (see `sys/image.rs`).
//! Any other function is rejected at compile time.

use std::any::Any;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proto::deadline::Stamper;
use crate::proto::{Failure, Fault, describe};
use crate::sys::image::{EntryFn, ZeroSized, conjure, offset_of};
use crate::worker::{
    ChunkCall, Context, ExitCall, Exited, Lifespan, LocalChunk, LocalDone, LocalJob, Measured,
    Probe, Results, Salvage, Salvaged, SetupCall, Takeback, catch,
};

/// A task's view of the worker that runs it: its id, the pool's shared object and this worker's
/// own state.
///
/// Tasks that take a `&mut Worker` as first argument are run with the `*_with` methods of
/// [`AsyncPool`](crate::AsyncPool); `worker_init` and `worker_exit` receive one too.
///
/// # Examples
///
/// ```no_run
/// use ampire::{AsyncPool, Worker};
///
/// // Count how many tasks each worker ran; the state lives as long as the worker.
/// fn count(w: &mut Worker<'_, u64, u32>, x: u64) -> u64 {
///     *w.state() += 1;
///     x + *w.shared()
/// }
/// fn start(_: &Worker<'_, u64, ()>) -> u32 {
///     0
/// }
/// fn finish(w: &mut Worker<'_, u64, u32>) -> u32 {
///     *w.state()
/// }
///
/// # async fn demo() -> Result<(), ampire::Error> {
/// let pool = AsyncPool::builder()
///     .workers(2)
///     .shared(100u64)
///     .worker_init(start)
///     .worker_exit(finish)
///     .build()
///     .await?;
/// let out = pool.map_with(count, 0..10u64).await?;
/// assert_eq!(out[0], 100);
/// let per_worker: Vec<u32> = pool.shutdown().await?;
/// assert_eq!(per_worker.iter().sum::<u32>(), 10);
/// # Ok(()) }
/// ```
pub struct Worker<'a, S = (), W = ()> {
    id: usize,
    shared: &'a S,
    state: &'a mut W,
    cancelled: &'a AtomicBool,
}

impl<S, W> Worker<'_, S, W> {
    /// This worker's id, `0..workers`; a replacement worker keeps the id of the one it replaces.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The pool's shared object: the same object under `Threading`, inherited copy-on-write under
    /// `Fork`, deserialised once per worker under `Spawn` and `Forkserver`.
    pub fn shared(&self) -> &S {
        self.shared
    }

    /// This worker's state, created by `worker_init` and kept across its tasks.
    pub fn state(&mut self) -> &mut W {
        self.state
    }

    /// Whether the pool has given up on the task running: under `Threading`, once the task ran
    /// past its [`task_timeout`](crate::Builder::task_timeout) or its call was dropped. A thread
    /// cannot be killed, so a long task that checks this now and then can stop early; what it
    /// returns then is dropped. A process worker is killed instead, so there it stays `false`.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

impl<S, W> std::fmt::Debug for Worker<'_, S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Types that may be a task's input: serialisable (for process workers) and `Debug` (for error
/// reports).
pub trait Input: Serialize + DeserializeOwned + Debug + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Debug + Send + 'static> Input for T {}

/// Types that may be a task's result or an exit result.
pub trait Output: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Output for T {}

/// Types that may be the pool's shared object.
pub trait Shared: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Shared for T {}

/// A zero-sized value that holds a user function type; see `sys::image::conjure`.
#[derive(Clone, Copy)]
pub(crate) struct Func<F>(pub F);

// `Func<F>` wraps user function types, which `Call::new` and friends checked to be zero-sized:
// `fn` items and closures that capture nothing.
impl<F: Copy + Send + Sync + 'static> ZeroSized for Func<F> {}

/// Produces the one value of the zero-sized function type `F`.
fn summon<F: Copy + Send + Sync + 'static>() -> F {
    conjure::<Func<F>>().0
}

const fn assert_zero_sized<F>() {
    assert!(
        std::mem::size_of::<F>() == 0,
        "ampire: a task, worker_init or worker_exit must be an fn item or a closure that captures nothing"
    );
}

/// A task function, with or without the worker context. Implementors are data-free markers.
pub(crate) trait Call<S, W, A, R>: Copy + Send + Sync + 'static {
    fn marker() -> Self;
    fn call(self, w: &mut Worker<'_, S, W>, a: A) -> R;
}

macro_rules! marker {
    ($($(#[$m:meta])* $t:ident;)*) => {$(
        $(#[$m])*
        pub(crate) struct $t<F>(PhantomData<fn() -> F>);
        impl<F> Clone for $t<F> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<F> Copy for $t<F> {}
        impl<F> $t<F> {
            /// Wraps a user function, rejecting at compile time any that is not zero-sized.
            pub(crate) fn new(_f: F) -> Self {
                const { assert_zero_sized::<F>() };
                $t(PhantomData)
            }
        }
    )*};
}
marker! {
    /// `fn(A) -> R`.
    Plain;
    /// `fn(&mut Worker<S, W>, A) -> R`.
    WithWorker;
    /// `worker_init`: `fn(&Worker<S, ()>) -> W`.
    Init;
    /// `worker_exit`: `fn(&mut Worker<S, W>) -> E`.
    ExitFn;
}

impl<F, S, W, A, R> Call<S, W, A, R> for Plain<F>
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
{
    fn marker() -> Self {
        Plain(PhantomData)
    }
    fn call(self, _w: &mut Worker<'_, S, W>, a: A) -> R {
        summon::<F>()(a)
    }
}

impl<F, S, W, A, R> Call<S, W, A, R> for WithWorker<F>
where
    F: Fn(&mut Worker<'_, S, W>, A) -> R + Copy + Send + Sync + 'static,
{
    fn marker() -> Self {
        WithWorker(PhantomData)
    }
    fn call(self, w: &mut Worker<'_, S, W>, a: A) -> R {
        summon::<F>()(w, a)
    }
}

pub(crate) trait MakeState<S, W>: Copy + Send + Sync + 'static {
    fn marker() -> Self;
    fn make(self, w: &Worker<'_, S, ()>) -> W;
}
pub(crate) trait Finish<S, W, E>: Copy + Send + Sync + 'static {
    fn marker() -> Self;
    fn finish(self, w: &mut Worker<'_, S, W>) -> E;
}

/// The `worker_init` of a pool that has none: the state is `()`.
#[derive(Clone, Copy)]
pub(crate) struct NoInit;
impl<S> MakeState<S, ()> for NoInit {
    fn marker() -> Self {
        NoInit
    }
    fn make(self, _: &Worker<'_, S, ()>) {}
}

impl<F, S, W> MakeState<S, W> for Init<F>
where
    F: Fn(&Worker<'_, S, ()>) -> W + Copy + Send + Sync + 'static,
{
    fn marker() -> Self {
        Init(PhantomData)
    }
    fn make(self, w: &Worker<'_, S, ()>) -> W {
        summon::<F>()(w)
    }
}

impl<F, S, W, E> Finish<S, W, E> for ExitFn<F>
where
    F: Fn(&mut Worker<'_, S, W>) -> E + Copy + Send + Sync + 'static,
{
    fn marker() -> Self {
        ExitFn(PhantomData)
    }
    fn finish(self, w: &mut Worker<'_, S, W>) -> E {
        summon::<F>()(w)
    }
}

/// Borrows the typed shared object and state out of a worker context: what a [`Worker`] is
/// made of.
fn parts<S: 'static, W: 'static>(cx: &mut Context) -> Result<Parts<'_, S, W>, String> {
    let Context {
        id,
        shared,
        state,
        watch,
        probe,
        ..
    } = cx;
    let shared = shared
        .as_deref()
        .and_then(|s| (s as &dyn Any).downcast_ref::<S>());
    let state = state.as_deref_mut().and_then(|s| s.downcast_mut::<W>());
    match (shared, state) {
        (Some(shared), Some(state)) => Ok(Parts {
            id: *id,
            shared,
            state,
            cancelled: &watch.cancelled,
            probe: probe.as_mut(),
        }),
        _ => Err("worker context does not match the task's types".into()),
    }
}

/// A worker context's typed parts.
struct Parts<'a, S, W> {
    id: usize,
    shared: &'a S,
    state: &'a mut W,
    cancelled: &'a AtomicBool,
    /// A thread worker's measurements, when insights are on.
    probe: Option<&'a mut Probe>,
}

impl<S, W> Parts<'_, S, W> {
    /// The task's view of them.
    fn worker(&mut self) -> Worker<'_, S, W> {
        Worker {
            id: self.id,
            shared: self.shared,
            state: &mut *self.state,
            cancelled: self.cancelled,
        }
    }

    /// Runs one task in a `catch_unwind` of its own, measured when the thread has a probe
    /// (insights on): its outcome, and what it used if it is among the slowest.
    fn call_one<T, A, R>(&mut self, task: T, a: A) -> (Result<R, Failure>, Option<Measured>)
    where
        T: Call<S, W, A, R>,
    {
        if let Some(p) = self.probe.as_deref_mut() {
            p.starting();
        }
        let r = catch(|| task.call(&mut self.worker(), a));
        (r, self.probe.as_deref_mut().and_then(Probe::finished))
    }
}

/// The results of a chunk: the values of the tasks that succeeded, in order, and the failures
/// with their position in the chunk.
pub(crate) struct ChunkOut<R> {
    pub values: Vec<R>,
    pub failures: Vec<(u32, Failure)>,
}

impl<R> Default for ChunkOut<R> {
    fn default() -> Self {
        ChunkOut {
            values: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// Runs every input of a thread worker's chunk through `run`, under one `catch_unwind` per run
/// of successes (not one per task): after a panic, the loop resumes at the next input.
fn run_chunk<A, R>(
    first: usize,
    inputs: impl Iterator<Item = A>,
    mut run: impl FnMut(A) -> R,
    out: &mut ChunkOut<R>,
) {
    let mut inputs = inputs.enumerate();
    loop {
        let mut at = 0u32;
        let finished = catch(|| {
            for (i, a) in inputs.by_ref() {
                at = (first + i) as u32;
                out.values.push(run(a));
            }
        });
        match finished {
            Ok(()) => return,
            Err(fail) => out.failures.push((at, fail)),
        }
    }
}

/// The entry point of a chunk of serialised inputs, called as a [`ChunkCall`].
fn chunk_entry<T, S, W, A, R>(cx: &mut dyn Any, input: &[u8], call: &mut dyn Any)
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Input,
    R: Output,
{
    if let (Some(cx), Some(call)) = (
        cx.downcast_mut::<Context>(),
        call.downcast_mut::<ChunkCall>(),
    ) {
        call.result = run_serialised::<T, S, W, A, R>(
            cx,
            input,
            call.count,
            &mut call.results,
            &mut call.lifespan,
        );
    }
}

/// Runs a chunk of `count` serialised inputs, handing each result, or each failure with its
/// input's `Debug`, to `results` as it comes: one `catch_unwind` per run of successes.
fn run_serialised<T, S, W, A, R>(
    cx: &mut Context,
    input: &[u8],
    count: u32,
    results: &mut Results,
    lifespan: &mut Lifespan,
) -> Result<(), String>
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Input,
    R: Output,
{
    let task = T::marker();
    let mut parts = parts::<S, W>(cx)?;
    let mut rest = input;
    let mut done = 0u32;
    while done < count {
        // Where the running task's input starts, to report it if the task fails.
        let mut at = rest;
        let ran = catch(|| {
            while done < count {
                at = rest;
                let (a, tail) = postcard::take_from_bytes::<A>(rest).map_err(|e| Failure {
                    fault: Fault::Codec,
                    message: format!("could not decode the task's input: {e}"),
                    ..Failure::default()
                })?;
                rest = tail;
                results.starting();
                results.push(&task.call(&mut parts.worker(), a))?;
                results.task_done(done, || describe_input::<A>(at));
                done += 1;
                if !lifespan.task_done() {
                    break; // the worker retires: the rest of the chunk is the pool's again
                }
            }
            Ok(())
        });
        let mut failure = match ran {
            Ok(Ok(())) => break,
            Ok(Err(failure)) | Err(failure) => failure,
        };
        if rest.as_ptr() == at.as_ptr() {
            // It failed while decoding its input: where the next one starts is not known, so
            // the rest of the chunk fails with it.
            while done < count {
                results.fail(failure.clone());
                done += 1;
            }
            break;
        }
        // The input was moved into the task; decode it once more from its bytes to report it.
        failure.input = Some(describe_input::<A>(at)).filter(|d| !d.is_empty());
        results.fail(failure);
        results.task_done(done, || describe_input::<A>(at));
        done += 1;
        if !lifespan.task_done() {
            break;
        }
    }
    Ok(())
}

/// The `Debug` of the input whose serialised form starts `bytes`, decoded once more (its task
/// consumed the first copy); empty if it does not decode.
fn describe_input<A: Input>(bytes: &[u8]) -> String {
    catch(|| postcard::take_from_bytes::<A>(bytes).ok())
        .ok()
        .flatten()
        .map(|(a, _)| describe(&a))
        .unwrap_or_default()
}

/// Decodes `count` results of a batch into a boxed [`ChunkOut<R>`] (see `dispatch::Decode`):
/// how many decoded, and why the next did not, if one did not.
pub(crate) fn decode_values<R: Output>(
    bytes: &[u8],
    count: usize,
) -> (Box<dyn Any + Send>, usize, Option<String>) {
    let mut values = Vec::with_capacity(count);
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let mut error = None;
    for _ in 0..count {
        match R::deserialize(&mut de) {
            Ok(v) => values.push(v),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let decoded = values.len();
    let out = ChunkOut {
        values,
        failures: Vec::new(),
    };
    (Box::new(out), decoded, error)
}

/// Finds input `index` of a chunk's serialised inputs (see `dispatch::Locate`): its `Debug`, and
/// where the input after it starts.
pub(crate) fn locate_input<A: Input>(inputs: &[u8], index: usize) -> Option<(String, usize)> {
    let mut rest = inputs;
    for _ in 0..index {
        rest = postcard::take_from_bytes::<A>(rest).ok()?.1;
    }
    let (a, tail) = postcard::take_from_bytes::<A>(rest).ok()?;
    Some((describe(&a), inputs.len() - tail.len()))
}

/// The entry point of a worker's set-up, called as a [`SetupCall`].
fn setup_entry<I, S, W>(cx: &mut dyn Any, input: &[u8], call: &mut dyn Any)
where
    I: MakeState<S, W>,
    S: Shared,
    W: 'static,
{
    if let (Some(cx), Some(call)) = (
        cx.downcast_mut::<Context>(),
        call.downcast_mut::<SetupCall>(),
    ) {
        call.result = set_up::<I, S, W>(cx, call.shared.then_some(input));
    }
}

/// Decodes the shared object (if given as bytes) and builds the worker state.
fn set_up<I, S, W>(cx: &mut Context, shared: Option<&[u8]>) -> Result<(), Failure>
where
    I: MakeState<S, W>,
    S: Shared,
    W: 'static,
{
    if let Some(bytes) = shared {
        let s: S = postcard::from_bytes(bytes).map_err(|e| Failure {
            message: format!("could not decode the shared object: {e}"),
            ..Failure::default()
        })?;
        cx.shared = Some(Arc::new(s));
    }
    let Some(shared) = cx
        .shared
        .as_deref()
        .and_then(|s| (s as &dyn Any).downcast_ref::<S>())
    else {
        return Err(Failure {
            message: "the shared object has an unexpected type".into(),
            ..Failure::default()
        });
    };
    let id = cx.id;
    let cancelled = &cx.watch.cancelled;
    let state = catch(|| {
        I::marker().make(&Worker {
            id,
            shared,
            state: &mut (),
            cancelled,
        })
    })?;
    cx.state = Some(Box::new(state));
    Ok(())
}

/// The entry point of `worker_exit`, called as an [`ExitCall`].
fn exit_entry<X, S, W, E>(cx: &mut dyn Any, _: &[u8], call: &mut dyn Any)
where
    X: Finish<S, W, E>,
    S: 'static,
    W: 'static,
    E: Output,
{
    if let (Some(cx), Some(call)) = (
        cx.downcast_mut::<Context>(),
        call.downcast_mut::<ExitCall>(),
    ) {
        call.result = finish::<X, S, W, E>(cx, call.local);
    }
}

/// Runs `worker_exit`, and serialises its result unless it stays in this process (`local`).
fn finish<X, S, W, E>(cx: &mut Context, local: bool) -> Result<Exited, Failure>
where
    X: Finish<S, W, E>,
    S: 'static,
    W: 'static,
    E: Output,
{
    let mut parts = parts::<S, W>(cx).map_err(|message| Failure {
        message,
        ..Failure::default()
    })?;
    let e = catch(|| X::marker().finish(&mut parts.worker()))?;
    if local {
        return Ok(Exited::Value(Box::new(e)));
    }
    postcard::to_stdvec(&e)
        .map(Exited::Bytes)
        .map_err(|e| Failure {
            fault: Fault::Codec,
            message: format!("could not serialise the exit result: {e}"),
            ..Failure::default()
        })
}

/// An entry point together with its offset, as sent to process workers.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub ptr: EntryFn,
    pub offset: i64,
}

impl Entry {
    fn of(ptr: EntryFn) -> Entry {
        Entry {
            ptr,
            offset: offset_of(ptr),
        }
    }
}

pub(crate) fn chunk<T, S, W, A, R>() -> Entry
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Input,
    R: Output,
{
    Entry::of(chunk_entry::<T, S, W, A, R>)
}

pub(crate) fn setup<I, S, W>() -> Entry
where
    I: MakeState<S, W>,
    S: Shared,
    W: 'static,
{
    Entry::of(setup_entry::<I, S, W>)
}

pub(crate) fn exit<X, S, W, E>() -> Entry
where
    X: Finish<S, W, E>,
    S: 'static,
    W: 'static,
    E: Output,
{
    Entry::of(exit_entry::<X, S, W, E>)
}

/// A thread worker's job of `items`, whose tasks may run for `timeout_us` each (0: no limit).
pub(crate) fn local_job<T, S, W, A, R>(items: Vec<A>, timeout_us: u64) -> LocalJob
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    match (timeout_us, items.len()) {
        (0, _) => LocalJob {
            chunk: local_chunk::<T, S, W, A, R>(items),
            takeback: Takeback::None,
        },
        (_, 1) => timed_task::<T, S, W, A, R>(items, timeout_us),
        _ => timed_chunk::<T, S, W, A, R>(items, timeout_us),
    }
}

/// A chunk of one task with a deadline (every `apply`, and chunks of one): nothing to take back
/// but the task itself, so no lock and no shared state. The task's deadline word in the thread's
/// `Watch` decides who owns its outcome: the thread, if it clears the word first, or the pool,
/// if it takes the word first (`Takeback::Task`).
fn timed_task<T, S, W, A, R>(mut items: Vec<A>, timeout_us: u64) -> LocalJob
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    let chunk: LocalChunk = Box::new(move |cx: &mut Context, budget: u64| {
        let Some(a) = items.pop().filter(|_| budget > 0) else {
            return LocalDone {
                out: Ok(Box::new(ChunkOut::<R>::default())),
                ran: 0,
                failed: 0,
                slow: Vec::new(),
                rest: (!items.is_empty()).then(|| timed_task::<T, S, W, A, R>(items, timeout_us)),
                abandoned: false,
            };
        };
        let word = cx.stamper.start(timeout_us);
        cx.watch.deadline.store(word, Ordering::Release);
        let task = T::marker();
        let (r, slow) = match parts::<S, W>(cx) {
            Ok(mut parts) => parts.call_one(task, a),
            Err(e) => return LocalDone::failed(e),
        };
        if !cx.watch.task_finished(word) {
            return LocalDone::abandoned();
        }
        let mut out = ChunkOut::default();
        match r {
            Ok(v) => out.values.push(v),
            Err(f) => out.failures.push((0, f)),
        }
        let failed = out.failures.len();
        LocalDone {
            out: Ok(Box::new(out)),
            ran: 1,
            failed,
            slow: slow.map(|m| vec![(0, m)]).unwrap_or_default(),
            rest: None,
            abandoned: false,
        }
    });
    LocalJob {
        chunk,
        takeback: Takeback::Task,
    }
}

/// A chunk without deadlines: the inputs move into the closure and run in one go, under one
/// `catch_unwind` per run of successes; those beyond the worker's budget are handed back.
fn local_chunk<T, S, W, A, R>(items: Vec<A>) -> LocalChunk
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    Box::new(move |cx: &mut Context, budget: u64| {
        let task = T::marker();
        let mut parts = match parts::<S, W>(cx) {
            Ok(parts) => parts,
            Err(e) => return LocalDone::failed(e),
        };
        let ran = budget.min(items.len() as u64) as usize;
        let mut out = ChunkOut {
            values: Vec::with_capacity(ran),
            failures: Vec::new(),
        };
        let mut inputs = items.into_iter();
        let mut slow = Vec::new();
        // With insights, tasks timed one by one, each in a `catch_unwind` of its own, while
        // the probe wants them so; the rest of the chunk as without.
        let mut timed = 0;
        if let Some(probe) = parts.probe.take() {
            while timed < ran && probe.per_task() {
                let a = inputs.next().expect("the chunk has `ran` inputs");
                probe.starting();
                match catch(|| task.call(&mut parts.worker(), a)) {
                    Ok(v) => out.values.push(v),
                    Err(f) => out.failures.push((timed as u32, f)),
                }
                if let Some(m) = probe.finished() {
                    slow.push((timed as u32, m));
                }
                timed += 1;
            }
        }
        run_chunk(
            timed,
            inputs.by_ref().take(ran - timed),
            |a| task.call(&mut parts.worker(), a),
            &mut out,
        );
        let rest: Vec<A> = inputs.collect();
        let failed = out.failures.len();
        LocalDone {
            out: Ok(Box::new(out)),
            ran,
            failed,
            slow,
            rest: (!rest.is_empty()).then(|| LocalJob {
                chunk: local_chunk::<T, S, W, A, R>(rest),
                takeback: Takeback::None,
            }),
            abandoned: false,
        }
    })
}

/// A chunk whose tasks have deadlines: its inputs and results stay in a state the pool can reach
/// (`Salvage`), and each task publishes its deadline as it starts.
struct Timed<T, S, W, A, R> {
    inner: Mutex<TimedInner<A, R>>,
    timeout_us: u64,
    _t: Markers<T, S, W>,
}

/// Carries a chunk's task, shared object and state types without values of them.
type Markers<T, S, W> = PhantomData<fn() -> (T, S, W)>;

struct TimedInner<A, R> {
    /// The inputs not started yet.
    inputs: std::vec::IntoIter<A>,
    /// The results of the tasks that finished.
    out: ChunkOut<R>,
    /// How many tasks started.
    started: usize,
    /// The deadline word of the task that runs, 0 when none does.
    word: u64,
    /// The pool took the chunk over.
    abandoned: bool,
}

impl<A, R> TimedInner<A, R> {
    /// The result of the last task that started.
    fn record(&mut self, r: Result<R, Failure>) {
        match r {
            Ok(v) => self.out.values.push(v),
            Err(f) => self.out.failures.push((self.started as u32 - 1, f)),
        }
    }
}

fn timed_chunk<T, S, W, A, R>(items: Vec<A>, timeout_us: u64) -> LocalJob
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    let len = items.len();
    let state = Arc::new(Timed::<T, S, W, A, R> {
        inner: Mutex::new(TimedInner {
            inputs: items.into_iter(),
            out: ChunkOut {
                values: Vec::with_capacity(len),
                failures: Vec::new(),
            },
            started: 0,
            word: 0,
            abandoned: false,
        }),
        timeout_us,
        _t: PhantomData,
    });
    let salvage = state.clone();
    let chunk: LocalChunk = Box::new(move |cx: &mut Context, budget: u64| {
        let lock = || state.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let task = T::marker();
        let watch = cx.watch.clone();
        let mut stamper = std::mem::replace(&mut cx.stamper, Stamper::new(0));
        let outcome = parts::<S, W>(cx).map(|mut parts| {
            let mut pending = None;
            let mut ran = 0u64;
            let mut slow = Vec::new();
            let abandoned = loop {
                let next = {
                    let mut g = lock();
                    if g.abandoned {
                        break true;
                    }
                    if let Some(r) = pending.take() {
                        g.record(r);
                    }
                    let next = (ran < budget).then(|| g.inputs.next()).flatten();
                    g.word = match next {
                        Some(_) => {
                            g.started += 1;
                            stamper.start(timeout_us)
                        }
                        None => 0,
                    };
                    watch.deadline.store(g.word, Ordering::Release);
                    next
                };
                let Some(a) = next else {
                    break false;
                };
                ran += 1;
                let (r, measured) = parts.call_one(task, a);
                pending = Some(r);
                if let Some(m) = measured {
                    slow.push((ran as u32 - 1, m));
                }
            };
            (abandoned, ran, slow)
        });
        cx.stamper = stamper;
        let (abandoned, ran, slow) = match outcome {
            Ok(outcome) => outcome,
            Err(e) => return LocalDone::failed(e),
        };
        if abandoned {
            return LocalDone::abandoned();
        }
        let mut g = lock();
        let out = std::mem::take(&mut g.out);
        let rest: Vec<A> = g.inputs.by_ref().collect();
        let failed = out.failures.len();
        LocalDone {
            out: Ok(Box::new(out)),
            ran: ran as usize,
            failed,
            slow,
            rest: (!rest.is_empty()).then(|| timed_chunk::<T, S, W, A, R>(rest, timeout_us)),
            abandoned: false,
        }
    });
    LocalJob {
        chunk,
        takeback: Takeback::Chunk(salvage),
    }
}

impl<T, S, W, A, R> Salvage for Timed<T, S, W, A, R>
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    fn salvage(&self, word: u64) -> Option<Salvaged> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.abandoned || word == 0 || g.word != word {
            return None;
        }
        g.abandoned = true;
        let out = std::mem::take(&mut g.out);
        let rest: Vec<A> = g.inputs.by_ref().collect();
        Some(Salvaged {
            failed: out.failures.len(),
            out: Box::new(out),
            finished: g.started - 1,
            rest: (!rest.is_empty()).then(|| timed_chunk::<T, S, W, A, R>(rest, self.timeout_us)),
        })
    }
}
