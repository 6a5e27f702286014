//! The engine every call shares: pulling input as capacity frees, chunking, submitting, and
//! turning completed chunks back into typed results.
//!
//! Input is pulled on the task that polls the call (the caller's), only while the call has fewer
//! than `max_tasks_active` tasks in flight. Results arrive through the call's own channel; the
//! call never waits on anything else, so a call that is not polled holds nothing the pool needs.
//!
//! - [`feed`]: sources, chunk sizes, encoding a chunk for a worker;
//! - [`collect`]: typed results and the reorder buffer.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

pub(crate) mod collect;
pub(crate) mod feed;

pub(crate) use collect::{Done, Reorder, Results};
pub(crate) use feed::{Encode, IterSource, Options, Source, StreamSource, encoder};
use feed::{Encoded, Feed, Fixed};

use crate::dispatch::{CallLink, Completion, Core, Job, Locate, Payload, SMALL_WINDOW};
use crate::error::Error;
use crate::observe::progress::{Bar, Close};
use crate::proto::frame::HEADER_ROOM;
use crate::task::{Output, decode_values};
use collect::decode;
use feed::Chunker;

/// Where a call's jobs go and how its inputs are made into jobs: the pool, and the encoder of
/// the call's task function.
pub(crate) struct Target<A> {
    pub core: Arc<Core>,
    pub encode: Encode<A>,
    /// How to find one of the call's inputs among a chunk's serialised inputs.
    pub locate: Locate,
    /// `apply`, `map`, ...: what the call is, and where it was made.
    pub kind: &'static str,
    pub site: &'static Location<'static>,
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
    /// A job the pool's queue had no room for (`max_queued_tasks`), to submit when it has.
    pending: Option<Job>,
    /// Ordered mode: completed chunks waiting for their turn.
    reorder: Reorder<Done<R>>,
    ready: VecDeque<Done<R>>,
    /// The chunk being handed out item by item, and the index of its next item.
    current: Option<(usize, std::vec::IntoIter<Result<R, Error>>)>,
    done: bool,
    _r: PhantomData<fn() -> R>,
}

impl<Src: Source<A>, A, R: Output> Engine<Src, A, R> {
    pub(crate) fn new(target: Target<A>, src: Src, opts: Options, ordered: bool) -> Self {
        let observer = target.core.observer.clone();
        let progress = observer.call(target.kind, target.site);
        let (link, rx) = CallLink::new(decode_values::<R>, target.locate, observer, progress);
        Engine {
            core: target.core,
            link,
            rx,
            encode: target.encode,
            src,
            opts,
            ordered,
            started: false,
            exhausted: false,
            chunker: Chunker::default(),
            limit: None,
            buf: Vec::new(),
            next_seq: 0,
            next_index: 0,
            active: 0,
            yielded: 0,
            pending: None,
            reorder: Reorder::new(),
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
        // An exact size hint is the truth; `.len(n)` stands in for it where there is none.
        let known = match self.src.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => o.len,
        };
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
        if o.task_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("task_timeout must be more than zero"));
        }
        self.chunker.fixed = match (o.chunk_size, o.n_splits, known) {
            (Some(c), _, _) => Some(Fixed::Size(c)),
            (None, Some(s), Some(n)) => Some(Fixed::splits(n, s)),
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
        self.link
            .set_timeout(o.task_timeout.or(self.core.settings.task_timeout));
        let progress = &self.link.progress;
        if let Some(n) = known {
            progress.set_total(n as u64);
        }
        if o.progress_bar {
            let _ = progress.bar.set(Bar::start(&self.core.observer, progress));
            crate::observe::progress::freshen(progress);
        }
        Ok(())
    }

    fn chunk_and_limit(&self) -> (usize, usize) {
        let workers = self.core.settings.workers;
        let depth = self.core.settings.depth;
        let mut chunk = self.chunker.size(self.next_seq);
        let limit = match self.limit {
            Some(l) => {
                // A chunk larger than the bound would never fit (MPIRE hangs here): shrink it.
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
        if let Some(job) = self.pending.take() {
            if !self.submit(job, Some(cx.waker()))? {
                return Ok(()); // the pool's queue is still full: woken when it has room
            }
        }
        while !self.exhausted || !self.buf.is_empty() {
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
            // Inputs an earlier chunk could not take (it was full in bytes) come first.
            let mut pulled = Poll::Ready(false);
            if !self.exhausted && self.buf.len() < chunk {
                pulled = self.src.pull(cx, chunk - self.buf.len(), &mut self.buf);
                if let Poll::Ready(true) = pulled {
                    self.exhausted = true;
                    let total = (self.next_index + self.buf.len()) as u64;
                    self.link.progress.set_total(total);
                }
            }
            if !self.buf.is_empty() && !self.send_front(Some(cx.waker()))? {
                return Ok(());
            }
            if pulled.is_pending() && self.buf.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Makes a job of the inputs at the front of the buffer, as many as fit in a frame, and
    /// submits it; an input that cannot be sent fails alone, here. `false` when the pool's
    /// queue is full: the job waits in `pending`, and `room` is woken when it may go.
    fn send_front(&mut self, room: Option<&Waker>) -> Result<bool, Error> {
        let feed = Feed {
            arena: self.core.spec.arena.as_ref(),
            local: self.core.is_local(),
            budget: self.core.spec.max_frame.saturating_sub(HEADER_ROOM),
            timeout_us: self.link.timeout_us(),
        };
        let first = self.next_index;
        match (self.encode)(&feed, &mut self.buf) {
            Encoded::Job { payload, taken } => {
                if let Payload::Remote { body, .. } = &payload {
                    self.chunker.observe_bytes(body.len(), taken);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.next_index += taken;
                self.active += taken;
                let job = Job::new(self.link.clone(), seq, first, taken, payload);
                self.submit(job, room)
            }
            Encoded::Failed(e) => {
                self.next_index += 1;
                self.accept(Done {
                    first,
                    results: Results::Mixed(vec![Err(e.with_task(first))]),
                });
                Ok(true)
            }
        }
    }

    /// Submits `job`, whose tasks count as active already; `false` when the pool's queue is
    /// full, and the job waits in `pending`.
    fn submit(&mut self, job: Job, room: Option<&Waker>) -> Result<bool, Error> {
        match self.core.submit(job, room)? {
            Ok(()) => Ok(true),
            Err(job) => {
                self.pending = Some(job);
                Ok(false)
            }
        }
    }

    /// Starts the call and submits its first job now, without waiting: `try_apply`. Fails when
    /// the pool's queue is full.
    pub(crate) fn submit_now(&mut self) -> Result<(), Error> {
        self.start()?;
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(true) = self.src.pull(&mut cx, 1, &mut self.buf) {
            self.exhausted = true;
        }
        if self.buf.is_empty() || self.send_front(None)? {
            return Ok(());
        }
        // Refused: nothing of the call stays in the pool.
        self.pending = None;
        self.active = 0;
        self.end(Close::Failed);
        Err(self.core.full())
    }

    fn accept(&mut self, done: Done<R>) {
        if self.ordered {
            let ready = &mut self.ready;
            let (first, len) = (done.first, done.results.len());
            self.reorder.push(first, len, done, |d| ready.push_back(d));
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
                self.end(Close::Failed);
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
                self.finish(Close::Failed);
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
                    // Counted here, by the call's one reader, not by the workers that deliver.
                    self.link.progress.finished(c.len, c.failed);
                    let done = decode::<R>(c);
                    self.accept(done);
                }
                Poll::Ready(None) => {
                    self.finish(Close::Failed);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if self.exhausted
                        && self.buf.is_empty()
                        && self.active == 0
                        && self.reorder.is_empty()
                    {
                        self.end(Close::Done);
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
    /// `how` says how it ended, for its progress bar.
    pub(crate) fn finish(&mut self, how: Close) {
        if !self.done {
            self.end(how);
            if self.active > 0 {
                self.core.cancel(&self.link);
            }
        }
    }

    /// The call is over: nothing more is pulled, and its bar shows `how` it ended.
    fn end(&mut self, how: Close) {
        if !self.done {
            self.done = true;
            self.link.progress.close(how);
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
        let pending = buffered
            + self.buf.len()
            + self.active
            + self.current.as_ref().map_or(0, |(_, it)| it.len());
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
        if !self.done {
            self.link.progress.close(Close::Dropped);
            if self.active > 0 {
                self.core.cancel(&self.link);
            }
        }
    }
}
