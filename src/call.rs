//! The engine every call shares: pulling input as capacity frees, chunking, submitting, and
//! turning completed chunks back into typed results.
//!
//! Input is pulled on the task that polls the call (the caller's), only while the call has fewer
//! than `max_tasks_active` tasks in flight. Results arrive through the call's own channel; the
//! call never waits on anything else, so a call that is not polled holds nothing the pool needs.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::dispatch::{CallLink, Completion, Core, Job, Outcome, Payload, SMALL_WINDOW};
use crate::error::{Error, Kind, Stage};
use crate::proto::Failure;
use crate::sys::shm::Arena;
use crate::task::{Call, ChunkOut, Input, Output, decode_boxed, local_chunk};

/// Turns a chunk of inputs into what a worker receives: for thread workers when the pool has no
/// arena (`None`), or else serialised, large bodies into the arena.
pub(crate) type Encode<A> = fn(Option<&Arc<Arena>>, bool, Vec<A>) -> Result<Payload, Error>;

pub(crate) fn encoder<T, S, W, A, R>() -> Encode<A>
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Input,
    R: Output,
{
    |arena, local, items| {
        if local {
            return Ok(Payload::Local(Some(local_chunk::<T, S, W, A, R>(items))));
        }
        let body = crate::proto::body::encode_body(&items, arena)
            .map_err(|e| Error::codec("could not serialise a task input", e))?;
        Ok(Payload::Remote {
            entry: crate::task::chunk::<T, S, W, A, R>().offset,
            count: items.len() as u32,
            body: Arc::new(body),
        })
    }
}

/// Options shared by every call that takes many inputs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    pub chunk_size: Option<usize>,
    pub n_splits: Option<usize>,
    pub max_tasks_active: Option<usize>,
    pub reorder_window: Option<usize>,
    pub len: Option<usize>,
}

/// Where a call's inputs come from.
pub(crate) trait Source<A> {
    /// Pulls up to `max` items into `out`. `Ready(true)` when the input is exhausted.
    fn pull(&mut self, cx: &mut Context<'_>, max: usize, out: &mut Vec<A>) -> Poll<bool>;
    fn size_hint(&self) -> (usize, Option<usize>);
}

pub(crate) struct IterSource<I>(pub I);

impl<I: Iterator> Source<I::Item> for IterSource<I> {
    fn pull(&mut self, _cx: &mut Context<'_>, max: usize, out: &mut Vec<I::Item>) -> Poll<bool> {
        for _ in 0..max {
            match self.0.next() {
                Some(a) => out.push(a),
                None => return Poll::Ready(true),
            }
        }
        Poll::Ready(false)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

pub(crate) struct StreamSource<St>(pub St);

impl<St: Stream + Unpin> Source<St::Item> for StreamSource<St> {
    fn pull(&mut self, cx: &mut Context<'_>, max: usize, out: &mut Vec<St::Item>) -> Poll<bool> {
        let before = out.len();
        while out.len() - before < max {
            match std::pin::Pin::new(&mut self.0).poll_next(cx) {
                Poll::Ready(Some(a)) => out.push(a),
                Poll::Ready(None) => return Poll::Ready(true),
                // Never wait to fill a chunk: send what is there.
                Poll::Pending if out.len() > before => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(false)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

/// Chunk sizes: fixed, derived from a known length, or adapted to measured task times.
struct Chunker {
    /// Set by the caller (`chunk_size`, `n_splits`): never changes.
    fixed: Option<usize>,
    /// The default for an input of known length: chunks are at least this large.
    floor: Option<usize>,
    /// Estimated nanoseconds per task (exponential moving average), for adaptive sizing.
    ns_per_task: Option<f64>,
    /// Serialised bytes per input, from the last chunk (process workers only).
    bytes_per_task: Option<usize>,
}

/// Adaptive chunks aim at this much work each: long enough to hide a hand-off, short enough to
/// spread work evenly and keep the reorder window small.
const TARGET_CHUNK: Duration = Duration::from_millis(2);
const MAX_ADAPTIVE_CHUNK: usize = 16 * 1024;
/// Chunks not set by the caller carry at most this many bytes of inputs (at least one input):
/// a worker starts sooner, work spreads more evenly, and less memory is in flight.
const MAX_CHUNK_BYTES: usize = 4 << 20;

impl Chunker {
    fn size(&self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let adaptive = self.ns_per_task.map_or(1, |ns| {
            ((TARGET_CHUNK.as_nanos() as f64 / ns.max(1.0)) as usize).clamp(1, MAX_ADAPTIVE_CHUNK)
        });
        // A known length gives MPIRE's chunk size; tasks measured to be tiny get larger chunks.
        let size = self.floor.map_or(adaptive, |f| f.max(adaptive));
        match self.bytes_per_task {
            Some(b) if b > 0 => size.min((MAX_CHUNK_BYTES / b).max(1)),
            _ => size,
        }
    }

    fn observe_bytes(&mut self, bytes: usize, len: usize) {
        if let Some(per) = bytes.checked_div(len) {
            self.bytes_per_task = Some(per);
        }
    }

    fn observe(&mut self, busy: Duration, len: usize) {
        if self.fixed.is_some() || len == 0 || busy.is_zero() {
            return;
        }
        let sample = busy.as_nanos() as f64 / len as f64;
        self.ns_per_task = Some(match self.ns_per_task {
            None => sample,
            Some(avg) => 0.7 * avg + 0.3 * sample,
        });
    }
}

/// The state of one call.
pub(crate) struct Engine<Src, A, R> {
    core: Arc<Core>,
    link: Arc<CallLink>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Completion>,
    encode: Encode<A>,
    src: Src,
    opts: Options,
    ordered: bool,
    started: bool,
    exhausted: bool,
    chunker: Chunker,
    limit: Option<usize>,
    buf: Vec<A>,
    next_seq: u64,
    next_index: usize,
    /// Tasks submitted and not completed.
    active: usize,
    /// Items handed to the caller (ordered mode bounds `next_index - yielded`).
    yielded: usize,
    /// Ordered mode: completed chunks waiting for their turn.
    reorder: BTreeMap<u64, Done<R>>,
    next_out: u64,
    ready: VecDeque<Done<R>>,
    /// The chunk being handed out item by item, and the index of its next item.
    current: Option<(usize, std::vec::IntoIter<Result<R, Error>>)>,
    done: bool,
    _r: PhantomData<fn() -> R>,
}

impl<Src: Source<A>, A, R: Output> Engine<Src, A, R> {
    pub(crate) fn new(
        core: Arc<Core>,
        encode: Encode<A>,
        src: Src,
        opts: Options,
        ordered: bool,
    ) -> Self {
        let (link, rx) = CallLink::new(decode_boxed::<R>);
        Engine {
            core,
            link,
            rx,
            encode,
            src,
            opts,
            ordered,
            started: false,
            exhausted: false,
            chunker: Chunker {
                fixed: None,
                floor: None,
                ns_per_task: None,
                bytes_per_task: None,
            },
            limit: None,
            buf: Vec::new(),
            next_seq: 0,
            next_index: 0,
            active: 0,
            yielded: 0,
            reorder: BTreeMap::new(),
            next_out: 0,
            ready: VecDeque::new(),
            current: None,
            done: false,
            _r: PhantomData,
        }
    }

    /// Checks the options and fixes the chunk size, once, on first poll.
    fn start(&mut self) -> Result<(), Error> {
        self.started = true;
        let o = self.opts;
        let workers = self.core.settings.workers;
        let known = o.len.or_else(|| match self.src.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        });
        if o.chunk_size == Some(0) {
            return Err(Error::config("chunk_size must be at least 1"));
        }
        if o.n_splits == Some(0) {
            return Err(Error::config("n_splits must be at least 1"));
        }
        if o.max_tasks_active == Some(0) {
            return Err(Error::config("max_tasks_active must be at least 1"));
        }
        if o.reorder_window == Some(0) {
            return Err(Error::config("reorder_window must be at least 1"));
        }
        self.chunker.fixed = match (o.chunk_size, o.n_splits, known) {
            (Some(c), _, _) => Some(c),
            (None, Some(s), Some(n)) => Some(n.div_ceil(s).max(1)),
            (None, Some(_), None) => {
                return Err(Error::config(
                    "n_splits needs an input of known length (give it with .len(n))",
                ));
            }
            (None, None, _) => None,
        };
        // MPIRE's default for a known length: 64 chunks per worker, so work spreads evenly.
        if self.chunker.fixed.is_none() {
            self.chunker.floor = known.map(|n| n.div_ceil(workers * 64).max(1));
        }
        self.limit = o.max_tasks_active;
        if let (Some(limit), Some(c)) = (self.limit, self.chunker.fixed) {
            // A chunk larger than the bound would never fit (MPIRE hangs here): shrink the chunk.
            self.chunker.fixed = Some(c.min(limit));
        }
        Ok(())
    }

    fn chunk_and_limit(&self) -> (usize, usize) {
        let workers = self.core.settings.workers;
        let depth = self.core.settings.depth;
        let mut chunk = self.chunker.size();
        let limit = match self.limit {
            Some(l) => {
                chunk = chunk.min(l);
                l
            }
            // Enough for every worker's pipeline plus as much again queued, and for small
            // chunks enough to fill a worker's window many times over.
            None => workers * ((depth + 1) * chunk).max(4 * SMALL_WINDOW),
        };
        (chunk, limit)
    }

    /// Pulls and submits input while the call has room.
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        while !self.exhausted {
            let (chunk, limit) = self.chunk_and_limit();
            if self.active > 0 && self.active + chunk > limit {
                return Ok(());
            }
            if self.ordered {
                let window = self.opts.reorder_window.unwrap_or(limit);
                let outstanding = self.next_index - self.yielded;
                if outstanding > 0 && outstanding + chunk > limit + window {
                    return Ok(());
                }
            }
            self.buf.clear();
            let pulled = self.src.pull(cx, chunk, &mut self.buf);
            if let Poll::Ready(true) = pulled {
                self.exhausted = true;
            }
            if !self.buf.is_empty() {
                let items = std::mem::take(&mut self.buf);
                let len = items.len();
                let job_seq = self.next_seq;
                let first = self.next_index;
                self.next_seq += 1;
                self.next_index += len;
                let max = self.core.spec.max_frame;
                let arena = self.core.spec.arena.as_ref();
                let encoded = (self.encode)(arena, self.core.is_local(), items).and_then(|p| match &p {
                    Payload::Remote { body, .. } if body.len() + 64 > max => Err(Error::config(format!(
                        "a chunk of {len} inputs takes {} bytes, more than max_frame_len ({max})",
                        body.len()
                    ))),
                    _ => Ok(p),
                });
                match encoded {
                    Ok(payload) => {
                        if let Payload::Remote { body, .. } = &payload {
                            self.chunker.observe_bytes(body.len(), len);
                        }
                        self.core.submit(Job::new(
                            self.link.clone(),
                            job_seq,
                            first,
                            len,
                            payload,
                        ))?;
                        self.active += len;
                    }
                    Err(e) => {
                        // The chunk never left; its tasks fail here, in order.
                        let results = (0..len)
                            .map(|i| Err(e.clone().with_task(first + i)))
                            .collect();
                        self.accept(
                            job_seq,
                            Done {
                                first,
                                results: Results::Mixed(results),
                            },
                        );
                    }
                }
            }
            if pulled.is_pending() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn accept(&mut self, seq: u64, done: Done<R>) {
        if self.ordered {
            self.reorder.insert(seq, done);
            while let Some(done) = self.reorder.remove(&self.next_out) {
                self.next_out += 1;
                self.ready.push_back(done);
            }
        } else {
            self.ready.push_back(done);
        }
    }

    /// The next finished chunk (in input order for ordered calls).
    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done<R>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.started {
            if let Err(e) = self.start() {
                self.done = true;
                return Poll::Ready(Some(Done {
                    first: 0,
                    results: Results::Mixed(vec![Err(e)]),
                }));
            }
        }
        loop {
            if let Some(done) = self.ready.pop_front() {
                self.yielded += done.results.len();
                return Poll::Ready(Some(done));
            }
            if let Err(e) = self.fill(cx) {
                self.finish();
                return Poll::Ready(Some(Done {
                    first: self.next_index,
                    results: Results::Mixed(vec![Err(e)]),
                }));
            }
            if !self.ready.is_empty() {
                continue;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(c)) => {
                    self.active -= c.len;
                    self.chunker.observe(c.busy, c.len);
                    let seq = c.seq;
                    let done = decode::<R>(c);
                    self.accept(seq, done);
                }
                Poll::Ready(None) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if self.exhausted && self.active == 0 && self.reorder.is_empty() {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// The next result, as `(index in the input, result)`.
    pub(crate) fn poll_item(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, Result<R, Error>)>> {
        loop {
            if let Some((index, items)) = &mut self.current {
                if let Some(r) = items.next() {
                    *index += 1;
                    return Poll::Ready(Some((*index - 1, r)));
                }
                self.current = None;
            }
            match self.poll_chunk(cx) {
                Poll::Ready(Some(done)) => {
                    self.current = Some((done.first, done.results.into_results().into_iter()))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Stops the call: nothing more is pulled; queued and running tasks are cancelled.
    pub(crate) fn finish(&mut self) {
        if !self.done {
            self.done = true;
            if self.active > 0 {
                self.core.cancel(&self.link);
            }
        }
    }

    pub(crate) fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let (lo, hi) = self.src.size_hint();
        let buffered: usize = self
            .ready
            .iter()
            .chain(self.reorder.values())
            .map(|d| d.results.len())
            .sum();
        let pending = buffered + self.active + self.current.as_ref().map_or(0, |(_, it)| it.len());
        (lo + pending, hi.map(|h| h + pending))
    }
}

impl<Src, A, R> Engine<Src, A, R> {
    pub(crate) fn options(&mut self) -> &mut Options {
        &mut self.opts
    }
}

// The engine is never pinned structurally: sources are boxed and the rest is plain data.
impl<Src: Unpin, A, R> Unpin for Engine<Src, A, R> {}

impl<Src, A, R> Drop for Engine<Src, A, R> {
    fn drop(&mut self) {
        if !self.done && self.active > 0 {
            self.core.cancel(&self.link);
        }
    }
}

fn task_error(failure: Failure, worker: Option<usize>, first: usize) -> Error {
    let index = first + failure.index as usize;
    let e = Error::new(Kind::Panic {
        failure,
        during: Stage::Task,
    })
    .with_task(index);
    match worker {
        Some(w) => e.with_worker(w),
        None => e,
    }
}

/// A finished chunk, typed.
pub(crate) struct Done<R> {
    /// Index of the chunk's first task in the call's input.
    pub first: usize,
    pub results: Results<R>,
}

pub(crate) enum Results<R> {
    /// Every task succeeded (the common case: no per-task wrapping).
    Ok(Vec<R>),
    /// Some failed.
    Mixed(Vec<Result<R, Error>>),
}

impl<R> Results<R> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Results::Ok(v) => v.len(),
            Results::Mixed(v) => v.len(),
        }
    }

    pub(crate) fn into_results(self) -> Vec<Result<R, Error>> {
        match self {
            Results::Ok(v) => v.into_iter().map(Ok).collect(),
            Results::Mixed(v) => v,
        }
    }
}

fn merge<R>(out: ChunkOut<R>, worker: Option<usize>, first: usize) -> Results<R> {
    if out.failures.is_empty() {
        return Results::Ok(out.values);
    }
    let total = out.values.len() + out.failures.len();
    let mut values = out.values.into_iter();
    let mut failures = out.failures.into_iter().peekable();
    let results = (0..total as u32)
        .map(|i| match failures.next_if(|(at, _)| *at == i) {
            Some((_, f)) => Err(task_error(f, worker, first)),
            None => values
                .next()
                .ok_or_else(|| Error::new(Kind::Protocol("missing result".into()))),
        })
        .collect();
    Results::Mixed(results)
}

/// Turns a completed chunk into typed results, one per task.
fn decode<R: Output>(c: Completion) -> Done<R> {
    let (worker, first, len) = (c.worker, c.first, c.len);
    let all_failed = |e: Error| {
        Results::Mixed(
            (0..len)
                .map(|i| Err(e.clone().with_task(first + i)))
                .collect(),
        )
    };
    let results = match c.outcome {
        Outcome::Failed(e) => all_failed(e),
        Outcome::Local(boxed) => match boxed.downcast::<ChunkOut<R>>() {
            Ok(out) => merge(*out, worker, first),
            Err(_) => all_failed(Error::new(Kind::Protocol(
                "a worker thread returned results of another type".into(),
            ))),
        },
    };
    Done { first, results }
}
