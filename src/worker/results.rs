//! Where a process worker's results go: straight into its journal as each task finishes, so that
//! they survive the worker; the pool hears of them in `Done` frames, one per batch.
//!
//! A batch is the results of consecutive tasks of one job. It ends with its job, when the next
//! result would not fit (in the ring, or in a frame: `max_frame_len` bounds a batch too), or when
//! a task fails: a failure ends its batch, and the `Done` frame carries it.
//!
//! `Done` frames are flushed before a job starts, or, for jobs of tasks the pool measured to be
//! tiny, when the worker would wait for its next job or once the oldest has waited
//! [`FLUSH_AFTER`]: a stream of tiny tasks costs one write for many results, not one each. Until
//! then the journal's header records each ended batch, so a worker that dies with frames
//! unflushed loses no result. A failure is flushed at once.
//!
//! Without a journal (a link that is not shared memory), or for a result larger than the ring,
//! results travel in the frame's body, one task each, flushed at once.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proto::body::{SliceSink, serialized_size, serializer};
use crate::proto::deadline::Stamper;
use crate::proto::frame::Shared;
use crate::proto::{Batch, Event, Failure, Fault, FromWorker, Span, Writer};

use crate::sys::journal::{self, RECORDS, Record};
use crate::worker::probe::{Measured, Probe};

/// A batch of at most this many bytes of results travels in its frame: the pool need not reach
/// into the journal for it, and once flushed the worker writes later batches over it.
const IN_FRAME: u64 = 256;

/// Results wait at most about this long for their frames to be flushed.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_micros(50);

/// Where the results of a worker's tasks go.
pub(crate) struct Results {
    wr: Writer<Shared>,
    ring: Option<journal::Writer>,
    /// The most a batch's results may take (what a frame holds besides its header).
    budget: usize,
    /// The job whose tasks run.
    job: u64,
    /// Index in the job of the open batch's first task.
    first: u32,
    /// Results in the open batch.
    values: u32,
    /// Ring position of the open batch's results.
    start: u64,
    t0: Instant,
    inline: Vec<u8>,
    /// Batches ended since the last flush (recorded in the journal's header), and when the
    /// first of them ended.
    pending: usize,
    since: Option<Instant>,
    /// Where the head may go back to once the frames are flushed: the start of the batches
    /// since the last one named by its place in the ring, which all travel in their frames.
    rewind_to: Option<u64>,
    /// The link to the pool broke: nothing more can be sent.
    broken: bool,
    /// How long each task of the job may run (0: no limit), and the deadlines published.
    timeout_us: u64,
    stamper: Stamper,
    /// What it measures of its tasks, when the pool's insights are on.
    probe: Option<Probe>,
}

impl Results {
    pub(crate) fn new(
        wr: Writer<Shared>,
        ring: Option<journal::Writer>,
        budget: usize,
        probe: Option<Probe>,
    ) -> Results {
        Results {
            wr,
            budget,
            job: 0,
            first: 0,
            values: 0,
            start: 0,
            t0: Instant::now(),
            inline: Vec::new(),
            pending: 0,
            since: None,
            rewind_to: None,
            broken: false,
            timeout_us: 0,
            stamper: Stamper::new(ring.as_ref().map_or(0, journal::Writer::epoch)),
            ring,
            probe,
        }
    }

    /// The frame writer, for messages other than results.
    pub(crate) fn writer(&mut self) -> &mut Writer<Shared> {
        &mut self.wr
    }

    /// Whether the link to the pool broke.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Claims job `seq` in the journal before it starts: `false` if the pool took it back. A
    /// worker without a journal runs every job it is sent.
    pub(crate) fn claim(&mut self, seq: u8) -> bool {
        self.ring.as_ref().is_none_or(|ring| ring.claim(seq))
    }

    /// Tasks of job `id` run next, from its first; each may run for `timeout_us` (0: no limit).
    pub(crate) fn start_job(&mut self, id: u64, timeout_us: u64) {
        self.job = id;
        self.first = 0;
        self.timeout_us = timeout_us;
        self.begin();
    }

    /// The next task starts: its deadline is published, when it has one.
    #[inline(always)]
    pub(crate) fn starting(&mut self) {
        if self.timeout_us != 0 {
            let word = self.stamper.start(self.timeout_us);
            match &self.ring {
                Some(ring) => ring.set_deadline(word),
                None => super::publish_own_deadline(word),
            }
        }
        if let Some(probe) = &mut self.probe {
            probe.starting();
        }
    }

    /// Task `index` of the job, whose input `input` describes, finished (its result or failure
    /// is in): with insights on, it is reported if it is among the worker's slowest.
    #[inline(always)]
    pub(crate) fn task_done(&mut self, index: u32, input: impl FnOnce() -> String) {
        if let Some(probe) = &mut self.probe {
            if let Some(m) = probe.finished() {
                self.report_slow(index, m, input());
            }
        }
    }

    #[cold]
    fn report_slow(&mut self, index: u32, m: Measured, input: String) {
        let event = Event::Slow {
            id: self.job,
            index,
            ns: m.time.as_nanos() as u64,
            cpu_ns: m.cpu.map(|c| c.as_nanos() as u64),
            peak_memory: m.peak_memory,
            input,
        };
        let sent = self.wr.send(&FromWorker::Event(event), &[]);
        self.sent(sent);
    }

    /// A batch of `tasks` ran in `busy`: the processor time used since the last batch, when
    /// measured.
    fn cpu_ns(&mut self, busy: Duration, tasks: u32) -> u64 {
        self.probe.as_mut().map_or(0, |p| {
            p.batch_done(busy, tasks);
            p.take_cpu().as_nanos() as u64
        })
    }

    fn begin(&mut self) {
        self.values = 0;
        self.t0 = Instant::now();
        if let Some(ring) = &mut self.ring {
            self.start = ring.begin(self.job, self.first);
        }
    }

    /// The next task's result. `Err` when it cannot be sent: it fails to serialise, or takes
    /// more than a frame; the task then fails with that, through [`Results::fail`].
    #[inline(always)]
    pub(crate) fn push<R: Serialize>(&mut self, r: &R) -> Result<(), Failure> {
        if let Some(ring) = &mut self.ring {
            let used = (ring.head() - self.start) as usize;
            let mut ser = postcard::Serializer {
                output: SliceSink::new(ring.space(self.budget - used)),
            };
            match r.serialize(&mut ser) {
                Ok(()) => {
                    let n = ser.output.written();
                    ring.advance(n);
                    self.values += 1;
                    ring.commit(self.values);
                    return Ok(());
                }
                Err(e) if !ser.output.is_full() => return Err(codec(e)),
                Err(_) => {}
            }
        }
        self.push_slow(r)
    }

    /// A result that does not fit at the head of the ring in the open batch.
    #[cold]
    fn push_slow<R: Serialize>(&mut self, r: &R) -> Result<(), Failure> {
        let need = serialized_size(r).map_err(codec)?;
        if need > self.budget {
            return Err(Failure {
                fault: Fault::Codec,
                message: format!(
                    "a result of {need} bytes is more than max_frame_len allows ({} for results)",
                    self.budget
                ),
                ..Failure::default()
            });
        }
        if self.values > 0 {
            self.end_batch(None);
            self.begin();
        }
        // The pool can release only what it has heard of.
        self.flush();
        if let Some(ring) = &mut self.ring {
            if ring.make_room(need) {
                self.start = ring.begin(self.job, self.first);
                let mut ser = postcard::Serializer {
                    output: SliceSink::new(ring.space(need)),
                };
                r.serialize(&mut ser).map_err(codec)?;
                let n = ser.output.written();
                ring.advance(n);
                self.values = 1;
                ring.commit(1);
                return Ok(());
            }
        }
        // Through the frame: for a result larger than the ring, or a link without one.
        self.inline.clear();
        r.serialize(&mut serializer(&mut self.inline))
            .map_err(codec)?;
        let busy = self.t0.elapsed();
        let batch = Batch {
            id: self.job,
            first: self.first,
            values: 1,
            at: Span::default(),
            busy_ns: busy.as_nanos() as u64,
            cpu_ns: self.cpu_ns(busy, 1),
        };
        let sent = self.wr.send(&FromWorker::Done(batch), &self.inline);
        self.sent(sent);
        self.flush();
        self.first += 1;
        self.begin();
        Ok(())
    }

    /// The next task failed: its batch ends with the failure.
    pub(crate) fn fail(&mut self, failure: Failure) {
        self.end_batch(Some(Box::new(failure)));
        self.begin();
    }

    /// The job's last task is done: the open batch ends (the next job opens its own), and no
    /// deadline runs any more.
    pub(crate) fn finish_job(&mut self) {
        if self.values > 0 {
            self.end_batch(None);
        }
        if self.timeout_us != 0 {
            match &self.ring {
                Some(ring) => ring.set_deadline(0),
                None => super::publish_own_deadline(0),
            }
        }
    }

    /// Sends the open batch, and the failure that ends it.
    fn end_batch(&mut self, failure: Option<Box<Failure>>) {
        let now = Instant::now();
        let len = self
            .ring
            .as_ref()
            .map_or(0, |ring| ring.head() - self.start);
        let in_frame = len <= IN_FRAME;
        let batch = Batch {
            id: self.job,
            first: self.first,
            values: self.values,
            at: match in_frame {
                true => Span::default(),
                false => Span {
                    offset: self.start,
                    len,
                },
            },
            busy_ns: (now - self.t0).as_nanos() as u64,
            cpu_ns: self.cpu_ns(now - self.t0, self.values + u32::from(failure.is_some())),
        };
        let record = Record {
            job: self.job,
            first: self.first,
            values: self.values,
            at: self.start,
            len,
        };
        self.first += self.values + u32::from(failure.is_some());
        let body = match (&self.ring, in_frame) {
            (Some(ring), true) => ring.written(self.start),
            _ => &[],
        };
        let failed = failure.is_some();
        let sent = match failure {
            None => self.wr.send(&FromWorker::Done(batch), body),
            Some(f) => self.wr.send(&FromWorker::Failed(batch, f), body),
        };
        self.sent(sent);
        let Some(ring) = &self.ring else {
            // Nothing records the batch: it must reach the pool now.
            return self.flush();
        };
        match in_frame {
            true => drop(self.rewind_to.get_or_insert(self.start)),
            false => self.rewind_to = None,
        }
        if failed {
            // The failure travels only in its frame.
            return self.flush();
        }
        ring.record(self.pending, record);
        self.pending += 1;
        let since = *self.since.get_or_insert(now);
        if self.pending == RECORDS || now - since >= FLUSH_AFTER {
            self.flush();
        }
    }

    /// Whether results have waited for their frames to be flushed for [`FLUSH_AFTER`].
    pub(crate) fn stale(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// Sends the frames written so far. Called before the worker waits for input, so the pool
    /// hears of every result before the worker could sit idle on it.
    pub(crate) fn flush(&mut self) {
        if self.wr.flush().is_err() {
            self.broken = true;
        }
        self.pending = 0;
        self.since = None;
        if let Some(ring) = &mut self.ring {
            ring.flushed();
            if let Some(at) = self.rewind_to.take() {
                // The pool has those results from their frames: write over them.
                ring.rewind(at);
            }
        }
    }

    fn sent(&mut self, sent: std::io::Result<()>) {
        if sent.is_err() {
            self.broken = true;
        }
    }
}

fn codec(e: postcard::Error) -> Failure {
    Failure {
        fault: Fault::Codec,
        message: format!("could not serialise the result: {e}"),
        ..Failure::default()
    }
}
