//! What a call returns: futures for `apply` and `map`, streams for `map_stream`.
//!
//! Each is configured by value before it is awaited or polled, then driven by the caller's task.
//! Nothing is sent to a worker before the first poll. Dropping one stops pulling its input,
//! removes its queued tasks, and kills (and replaces) any process worker still running one of its
//! tasks; a thread worker cannot be killed, its result is discarded.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::call::{Engine, IterSource, Options, Reorder, Results, StreamSource, Target};
use crate::error::Error;
use crate::observe::progress::Close;
use crate::task::Output;

/// A single task; `.await` it for its result.
///
/// Returned by [`AsyncPool::apply`](crate::AsyncPool::apply). A panic in the task, the death of
/// its worker or its cancellation fail this task alone; the pool keeps serving.
#[must_use = "a task does nothing until it is awaited"]
pub struct Apply<A, R> {
    target: Target<A>,
    arg: A,
    timeout: Option<std::time::Duration>,
    bar: bool,
    _r: std::marker::PhantomData<fn() -> R>,
}

impl<A, R> Apply<A, R> {
    pub(crate) fn new(target: Target<A>, arg: A) -> Self {
        Apply {
            target,
            arg,
            timeout: None,
            bar: false,
            _r: std::marker::PhantomData,
        }
    }

    /// How long the task may run, from when it starts: overrides the pool's
    /// [`task_timeout`](crate::Builder::task_timeout), which says what happens at the deadline.
    pub fn task_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Shows a progress bar (of one task) while it runs; see [`Map::progress_bar`].
    pub fn progress_bar(mut self, on: bool) -> Self {
        self.bar = on;
        self
    }
}

impl<A: Send + 'static, R: Output> IntoFuture for Apply<A, R> {
    type Output = Result<R, Error>;
    type IntoFuture = ApplyFuture<A, R>;

    fn into_future(self) -> ApplyFuture<A, R> {
        let opts = Options {
            chunk_size: Some(1),
            task_timeout: self.timeout,
            progress_bar: self.bar,
            ..Options::default()
        };
        ApplyFuture {
            engine: Engine::new(
                self.target,
                IterSource(Box::new(Some(self.arg).into_iter())),
                opts,
                false,
            ),
        }
    }
}

impl<A: Send + 'static, R: Output> Apply<A, R> {
    /// Submits the task now, without waiting for room: the future of its result, or an error
    /// at once ([`Error::is_full`]) when the pool's queue is full (see
    /// [`Builder::max_queued_tasks`](crate::Builder::max_queued_tasks)).
    pub fn try_submit(self) -> Result<ApplyFuture<A, R>, Error> {
        let mut future = self.into_future();
        future.engine.submit_now()?;
        Ok(future)
    }
}

impl<A, R> fmt::Debug for Apply<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Apply").finish_non_exhaustive()
    }
}

/// The future of an [`Apply`].
#[must_use = "futures do nothing unless polled"]
pub struct ApplyFuture<A, R> {
    engine: Engine<IterSource<Box<std::option::IntoIter<A>>>, A, R>,
}

impl<A, R: Output> Future for ApplyFuture<A, R> {
    type Output = Result<R, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.engine.poll_item(cx) {
            Poll::Ready(Some((_, r))) => {
                self.engine.finish(match r {
                    Ok(_) => Close::Done,
                    Err(_) => Close::Failed,
                });
                Poll::Ready(r)
            }
            Poll::Ready(None) => Poll::Ready(Err(Error::closed())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<A, R> Unpin for ApplyFuture<A, R> {}

impl<A, R> fmt::Debug for ApplyFuture<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyFuture").finish_non_exhaustive()
    }
}

/// The per-call setters shared by [`Map`] and [`MapStream`].
macro_rules! options {
    () => {
        /// Tasks per chunk: a worker receives this many inputs at once. A chunk is also cut
        /// where its inputs would not fit in [`max_frame_len`](crate::Builder::max_frame_len).
        /// Chunking changes how work travels, never what fails: a task that fails, or whose
        /// worker dies, fails alone. Default: adapted to the measured task time (about 2 ms of
        /// work per chunk, starting at 1), and never below `len / (workers * 64)` when the
        /// input's length is known (MPIRE's rule).
        pub fn chunk_size(mut self, n: usize) -> Self {
            self.options().chunk_size = Some(n);
            self
        }

        /// Split the input into `min(n, len)` chunks whose sizes differ by at most one, instead of
        /// giving a chunk size (MPIRE's `n_splits`). Needs a known length: the input's own, or
        /// one given with `.len(n)`. `chunk_size` wins when both are set.
        pub fn n_splits(mut self, n: usize) -> Self {
            self.options().n_splits = Some(n);
            self
        }

        /// At most this many tasks of this call are queued or running at once; input is pulled only
        /// as results come back, so an endless input runs in bounded memory. A bound smaller than
        /// the chunk size shrinks the chunks. Default: `workers * max(3 * chunk_size, 256)`.
        pub fn max_tasks_active(mut self, n: usize) -> Self {
            self.options().max_tasks_active = Some(n);
            self
        }

        /// The number of inputs, when the input cannot tell (MPIRE's `iterable_len`). Used for
        /// the default chunk size and `n_splits`; a wrong value only changes chunking.
        pub fn len(mut self, n: usize) -> Self {
            self.options().len = Some(n);
            self
        }

        /// Shows a progress bar while the call runs: done and total, rate, time left, failures
        /// (for an input of unknown length, a count and a rate). Bars are drawn on stderr, and
        /// only when it is a terminal; a call of a pool nested in a worker draws its bar under
        /// its parent's bar, under every start method. Default: off.
        pub fn progress_bar(mut self, on: bool) -> Self {
            self.options().progress_bar = on;
            self
        }

        /// How long each task of this call may run, from when it starts: overrides the pool's
        /// [`task_timeout`](crate::Builder::task_timeout), which says what happens at the
        /// deadline.
        pub fn task_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.options().task_timeout = Some(timeout);
            self
        }
    };
}

/// Many tasks, collected into a `Vec`; `.await` it.
///
/// Returned by [`AsyncPool::map`](crate::AsyncPool::map) (results in input order) and
/// [`AsyncPool::map_unordered`](crate::AsyncPool::map_unordered) (in completion order). The
/// first failure is returned at once and the rest of the call is cancelled ("fail fast"); the pool
/// stays usable. Use a stream for per-task errors.
#[must_use = "a map does nothing until it is awaited"]
pub struct Map<I, A, R> {
    target: Target<A>,
    items: I,
    opts: Options,
    ordered: bool,
    _r: std::marker::PhantomData<fn() -> R>,
}

impl<I, A, R> Map<I, A, R> {
    pub(crate) fn new(target: Target<A>, items: I, ordered: bool) -> Self {
        Map {
            target,
            items,
            opts: Options::default(),
            ordered,
            _r: std::marker::PhantomData,
        }
    }

    fn options(&mut self) -> &mut Options {
        &mut self.opts
    }

    options!();
}

impl<I, A, R> IntoFuture for Map<I, A, R>
where
    I: Iterator<Item = A>,
    R: Output,
{
    type Output = Result<Vec<R>, Error>;
    type IntoFuture = MapFuture<I, A, R>;

    fn into_future(self) -> MapFuture<I, A, R> {
        MapFuture {
            engine: Engine::new(
                self.target,
                IterSource(Box::new(self.items)),
                self.opts,
                false,
            ),
            ordered: self.ordered,
            out: Vec::new(),
            early: Reorder::new(),
            reserved: false,
        }
    }
}

impl<I, A, R> fmt::Debug for Map<I, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("ordered", &self.ordered)
            .field("options", &self.opts)
            .finish_non_exhaustive()
    }
}

/// The future of a [`Map`].
#[must_use = "futures do nothing unless polled"]
pub struct MapFuture<I, A, R> {
    engine: Engine<IterSource<Box<I>>, A, R>,
    ordered: bool,
    /// Results: in input order up to the first missing chunk (ordered), or as they came.
    out: Vec<R>,
    /// Ordered maps: finished chunks beyond the first missing one.
    early: Reorder<Vec<R>>,
    reserved: bool,
}

impl<I, A, R> MapFuture<I, A, R> {
    /// Puts a finished chunk in place: ordered results go straight into `out` while they are
    /// contiguous, so there is no copy of everything at the end.
    fn place(&mut self, first: usize, values: Vec<R>) {
        if !self.ordered {
            self.out.extend(values);
            return;
        }
        let out = &mut self.out;
        self.early
            .push(first, values.len(), values, |v| out.extend(v));
    }
}

impl<I: Iterator<Item = A>, A, R: Output> Future for MapFuture<I, A, R> {
    type Output = Result<Vec<R>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.reserved {
            // Known lengths get their whole vector at once: no regrowth copies. Fallible and
            // capped, since a size hint may be wrong (an endless `repeat` says `usize::MAX`).
            this.reserved = true;
            let _ = this.out.try_reserve(this.engine.size_hint().0.min(1 << 26));
        }
        loop {
            match this.engine.poll_chunk(cx) {
                Poll::Ready(Some(done)) => match done.results {
                    Results::Ok(values) => this.place(done.first, values),
                    Results::Mixed(results) => {
                        // Fail fast: the first error of the chunk ends the call.
                        let mut values = Vec::with_capacity(results.len());
                        for r in results {
                            match r {
                                Ok(v) => values.push(v),
                                Err(e) => {
                                    this.engine.finish(Close::Failed);
                                    return Poll::Ready(Err(e));
                                }
                            }
                        }
                        this.place(done.first, values);
                    }
                },
                Poll::Ready(None) => {
                    if !this.early.is_empty() {
                        return Poll::Ready(Err(Error::closed()));
                    }
                    return Poll::Ready(Ok(std::mem::take(&mut this.out)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// Nothing in a `MapFuture` is pinned: the iterator is boxed, the rest is plain data.
impl<I, A, R> Unpin for MapFuture<I, A, R> {}

impl<I, A, R> fmt::Debug for MapFuture<I, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapFuture")
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

/// A stream of results, one per input, each a `Result`: a failed task yields its `Err` and the
/// stream goes on.
///
/// Returned by [`AsyncPool::map_stream`](crate::AsyncPool::map_stream) (input order) and
/// [`AsyncPool::map_stream_unordered`](crate::AsyncPool::map_stream_unordered) (completion
/// order). Input is pulled only as capacity frees, so a slow consumer slows the producer down.
///
/// **The reorder window.** In input order, results that finished early wait for the tasks before
/// them. At most `max_tasks_active` tasks run, and at most `reorder_window` (default: the same
/// number) more finished results are held; when the head task is slow, the stream stops pulling
/// input once that window is full, so memory stays bounded and the workers may idle until the
/// head finishes.
#[must_use = "streams do nothing unless polled"]
pub struct MapStream<St, A, R> {
    engine: Engine<StreamSource<Pin<Box<St>>>, A, R>,
}

impl<St, A, R: Output> MapStream<St, A, R>
where
    St: Stream<Item = A>,
{
    pub(crate) fn new(target: Target<A>, input: St, ordered: bool) -> Self {
        MapStream {
            engine: Engine::new(
                target,
                StreamSource(Box::pin(input)),
                Options::default(),
                ordered,
            ),
        }
    }
}

impl<St, A, R> MapStream<St, A, R> {
    fn options(&mut self) -> &mut Options {
        self.engine.options()
    }

    options!();

    /// Ordered streams: how many finished results may wait for a slower task before them.
    pub fn reorder_window(mut self, n: usize) -> Self {
        self.engine.options().reorder_window = Some(n);
        self
    }
}

impl<St, A, R: Output> Stream for MapStream<St, A, R>
where
    St: Stream<Item = A>,
{
    type Item = Result<R, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.engine.poll_item(cx).map(|item| item.map(|(_, r)| r))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.engine.size_hint()
    }
}

impl<St, A, R> Unpin for MapStream<St, A, R> {}

impl<St, A, R> fmt::Debug for MapStream<St, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapStream").finish_non_exhaustive()
    }
}
