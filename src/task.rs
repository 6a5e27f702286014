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
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::proto::Failure;
use crate::sys::image::{EntryFn, ZeroSized, conjure, offset_of};
use crate::worker::{ChunkCall, Context, ExitCall, LocalChunk, SetupCall, catch};

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

/// Borrows the typed shared object and state out of a worker context.
fn parts<S: 'static, W: 'static>(cx: &mut Context) -> Result<(usize, &S, &mut W), String> {
    let id = cx.id;
    let shared = cx
        .shared
        .as_deref()
        .and_then(|s| (s as &dyn Any).downcast_ref::<S>());
    let state = cx.state.as_deref_mut().and_then(|s| s.downcast_mut::<W>());
    match (shared, state) {
        (Some(s), Some(w)) => Ok((id, s, w)),
        _ => Err("worker context does not match the task's types".into()),
    }
}

/// The results of a chunk: the values of the tasks that succeeded, in order, and the failures
/// with their position in the chunk.
pub(crate) struct ChunkOut<R> {
    pub values: Vec<R>,
    pub failures: Vec<(u32, Failure)>,
}

/// Runs every input of a chunk through `run`, under one `catch_unwind` per run of successes (not
/// one per task): after a panic, the loop resumes at the next input.
fn run_chunk<A, R>(
    inputs: impl Iterator<Item = A>,
    mut run: impl FnMut(A) -> R,
    out: &mut ChunkOut<R>,
) {
    let mut inputs = inputs.enumerate();
    loop {
        let mut at = 0u32;
        let finished = catch(|| {
            for (i, a) in inputs.by_ref() {
                at = i as u32;
                out.values.push(run(a));
            }
        });
        match finished {
            Ok(()) => return,
            Err(mut fail) => {
                fail.index = at;
                out.failures.push((at, fail));
            }
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
        call.result = run_serialised::<T, S, W, A, R>(cx, input, call.count, &mut call.out);
    }
}

/// Runs a chunk of serialised inputs. The output is `[u32 LE failures][values][failures]`: the
/// serialised values of the tasks that succeeded, then `(index, Failure)` of those that did not.
fn run_serialised<T, S, W, A, R>(
    cx: &mut Context,
    input: &[u8],
    count: u32,
    out: &mut Vec<u8>,
) -> Result<(), String>
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Input,
    R: Output,
{
    let task = T::marker();
    let (id, shared, state) = parts::<S, W>(cx)?;
    let mut starts = Vec::new();
    let mut rest = input;
    let mut bad_input = None;
    let inputs = std::iter::from_fn(|| {
        if starts.len() as u32 == count || bad_input.is_some() {
            return None;
        }
        starts.push(input.len() - rest.len());
        match postcard::take_from_bytes::<A>(rest) {
            Ok((a, tail)) => {
                rest = tail;
                Some(a)
            }
            Err(e) => {
                bad_input = Some(format!("could not decode a task input: {e}"));
                None
            }
        }
    });
    out.clear();
    out.extend_from_slice(&[0; 4]);
    let mut serialise_error = None;
    let mut chunk = ChunkOut {
        values: Vec::new(),
        failures: Vec::new(),
    };
    {
        // One serializer for the whole chunk, appending each result as it is made.
        let mut ser = crate::proto::body::serializer(out);
        run_chunk(
            inputs,
            |a| {
                let r = task.call(
                    &mut Worker {
                        id,
                        shared,
                        state: &mut *state,
                    },
                    a,
                );
                if let Err(e) = r.serialize(&mut ser) {
                    serialise_error = Some(e.to_string());
                }
            },
            &mut chunk,
        );
    }
    if let Some(e) = bad_input {
        return Err(e);
    }
    if let Some(e) = serialise_error {
        return Err(format!("could not serialise a result: {e}"));
    }
    // The input was moved into the task; decode it once more from its bytes to report it.
    for (at, fail) in &mut chunk.failures {
        fail.input = starts
            .get(*at as usize)
            .and_then(|&s| postcard::take_from_bytes::<A>(&input[s..]).ok())
            .map(|(a, _)| format!("{a:?}"));
    }
    out[..4].copy_from_slice(&(chunk.failures.len() as u32).to_le_bytes());
    let mut ser = crate::proto::body::serializer(out);
    for f in &chunk.failures {
        f.serialize(&mut ser).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Decodes the output of [`chunk_entry`].
pub(crate) fn decode_chunk<R: Output>(bytes: &[u8], count: usize) -> Result<ChunkOut<R>, String> {
    let Some((head, rest)) = bytes.split_first_chunk::<4>() else {
        return Err("truncated chunk result".into());
    };
    let failed = u32::from_le_bytes(*head) as usize;
    let ok = count
        .checked_sub(failed)
        .ok_or("more failures than tasks")?;
    let mut out = ChunkOut {
        values: Vec::with_capacity(ok),
        failures: Vec::with_capacity(failed),
    };
    let mut de = postcard::Deserializer::from_bytes(rest);
    for _ in 0..ok {
        out.values
            .push(R::deserialize(&mut de).map_err(|e| e.to_string())?);
    }
    for _ in 0..failed {
        out.failures
            .push(<(u32, Failure)>::deserialize(&mut de).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// [`decode_chunk`], boxed as a thread worker hands over its results (see `dispatch::Decode`).
pub(crate) fn decode_boxed<R: Output>(
    bytes: &[u8],
    count: usize,
) -> Result<Box<dyn Any + Send>, String> {
    decode_chunk::<R>(bytes, count).map(|out| Box::new(out) as Box<dyn Any + Send>)
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
    let state = catch(|| {
        I::marker().make(&Worker {
            id,
            shared,
            state: &mut (),
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
        call.result = finish::<X, S, W, E>(cx);
    }
}

/// Runs `worker_exit` and serialises its result.
fn finish<X, S, W, E>(cx: &mut Context) -> Result<Vec<u8>, Failure>
where
    X: Finish<S, W, E>,
    S: 'static,
    W: 'static,
    E: Output,
{
    let (id, shared, state) = parts::<S, W>(cx).map_err(|message| Failure {
        message,
        ..Failure::default()
    })?;
    let e = catch(|| X::marker().finish(&mut Worker { id, shared, state }))?;
    postcard::to_stdvec(&e).map_err(|e| Failure {
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

pub(crate) fn local_chunk<T, S, W, A, R>(items: Vec<A>) -> LocalChunk
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    Box::new(move |cx: &mut Context| {
        let task = T::marker();
        let (id, shared, state) = parts::<S, W>(cx)?;
        let mut out = ChunkOut {
            values: Vec::with_capacity(items.len()),
            failures: Vec::new(),
        };
        run_chunk(
            items.into_iter(),
            |a| {
                task.call(
                    &mut Worker {
                        id,
                        shared,
                        state: &mut *state,
                    },
                    a,
                )
            },
            &mut out,
        );
        Ok(Box::new(out) as Box<dyn Any + Send>)
    })
}
