//! A process worker's journal: a shared-memory region, one per worker, that survives the worker.
//!
//! The worker writes each task's result into the journal's ring as the task finishes, and records
//! in the header how far it got; the pool reads the results from the ring when the worker names
//! them in a `Done` frame, and after a crash reads from the header which tasks had finished and
//! which one was running. The header also arbitrates which jobs the worker may still start (the
//! *claim word*), so the pool can take back a job the worker has not started.
//!
//! ```text
//! [header: one page of atomics][ring: result bytes]
//! ```
//!
//! Positions in the ring are monotonic byte counts; position `p` is byte `p % cap` of the ring.
//! The worker owns the bytes from `tail` (what the pool has released) to `tail + cap`; a batch of
//! results is always in one piece, so a batch that would cross the ring's end starts at the next
//! lap instead and the bytes it skipped count as used until the pool releases past them.
//!
//! Who writes what: the worker writes the ring between `tail` and `tail + cap`, the batch fields
//! and the claim word; the pool writes `tail`, and the claim word's revocation bits. Everything
//! shared is an atomic, except ring bytes, which change hands through the `Done` frame (worker to
//! pool) and `tail` (pool to worker).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::shm::{map, memfd, unmap};

/// The header takes the first page.
const HEADER: usize = 4096;

/// `done` while the worker is between batches (the fields beside it are being written).
const BETWEEN: u64 = u64::MAX;

/// At most this many jobs may wait on a worker, besides the one it runs: the claim word has one
/// revocation bit for each.
pub(crate) const MAX_QUEUED: usize = 56;

/// Once a lap is this far along, a new batch goes back to the ring's start if enough of it is
/// free there: the pages the ring touches stay about this many, whatever its size.
const COMPACT_AT: u64 = 256 << 10;

#[repr(C)]
struct Header {
    // The worker's cache line.
    /// Low byte: the per-worker sequence number of the last job the worker claimed. Above it, bit
    /// `i`: the job `i + 1` after that one is revoked and must be skipped.
    claim: AtomicU64,
    /// The job of the current batch, the index in that job of the batch's first task, the ring
    /// position where its results start, and how many tasks of it are done (`BETWEEN` while these
    /// are being written).
    job: AtomicU64,
    first: AtomicU64,
    start: AtomicU64,
    done: AtomicU64,
    /// The deadline of the task the worker runs, 0 when none (see `proto::deadline`).
    deadline: AtomicU64,
    _worker: [u64; 2],
    // The pool's cache line.
    /// How far the pool has released the ring.
    tail: AtomicU64,
    /// The time deadlines count from, set once by the pool before the worker starts.
    epoch: AtomicU64,
    _pool: [u64; 6],
    // The worker's wait for room.
    waiting: AtomicU32,
    wake: AtomicU32,
    _wait: [u32; 14],
    /// Batches the worker ended whose `Done` frames it may not have flushed yet: how many, then
    /// for each its job, first task and results (`first | values << 32`), ring position and
    /// length. A worker flushes its frames when it would wait for input, not after every batch.
    pending: AtomicU64,
    /// How many times the worker has flushed its frames: the pool, reading the records of a
    /// live worker, knows from it whether they changed under it.
    flushes: AtomicU64,
    _pending: [u64; 6],
    records: [[AtomicU64; 4]; RECORDS],
}

/// How many ended batches the header records; a worker flushes before it would need more.
pub(crate) const RECORDS: usize = 64;

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER);

/// A mapping of a journal: the header and the ring.
struct Mapping {
    base: NonNull<u8>,
    cap: usize,
}

// SAFETY: the mapping is `MAP_SHARED` and lives as long as this value. The header is reached only
// through atomics; ring bytes only through the methods below, whose callers follow the hand-over
// described in the module docs.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len <= HEADER {
            return Err(io::Error::other("a journal is too small for its header"));
        }
        let base = map(fd, len, libc::PROT_READ | libc::PROT_WRITE)?;
        Ok(Mapping {
            base,
            cap: len - HEADER,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts page-aligned and holds at least `HEADER` bytes, enough for a
        // `Header` (checked at compile time). `Header` is made of atomics and padding integers,
        // valid for every bit pattern (a new `memfd` is zero), and both processes access the
        // shared ones only atomically.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// Ring bytes `[off, off + len)`, which must lie inside the ring.
    ///
    /// # Safety
    ///
    /// No `&mut` to these bytes may exist in this process while the slice lives, and the other
    /// side must not write them: they are a batch it handed over and the pool has not released,
    /// or the worker is dead.
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off + len <= self.cap);
        // SAFETY: inside the mapping (the ring follows the header); the caller keeps writers out.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(HEADER + off), len) }
    }

    /// Ring bytes `[off, off + len)` to write, which must lie inside the ring.
    ///
    /// # Safety
    ///
    /// The bytes must be the worker's own (between its head and `tail + cap`), and no other
    /// reference to them may exist in this process while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off + len <= self.cap);
        // SAFETY: inside the mapping; the caller guarantees exclusive use of the range.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(HEADER + off), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unmap(self.base, HEADER + self.cap);
    }
}

/// A batch of results in the ring: its job, the index of its first task in the job, how many
/// results, and where they lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub job: u64,
    pub first: u32,
    pub values: u32,
    pub at: u64,
    pub len: u64,
}

/// What a dead worker's header says.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    /// The batches it ended, oldest first, whose frames it may not have flushed.
    pub ended: Vec<Record>,
    /// The batch it was writing, if it was in one: its job, the index of its first task in the
    /// job, where its results start in the ring, and how many of its tasks were done.
    pub batch: Option<(u64, u32, u64, u32)>,
}

/// The pool's side of a worker's journal.
pub(crate) struct Journal {
    fd: OwnedFd,
    map: Mapping,
}

impl Journal {
    /// A journal whose ring holds `cap` bytes (rounded up to a power of two, at least a page).
    /// Pages are allocated only as the worker writes them.
    pub(crate) fn new(cap: usize, epoch: u64) -> io::Result<Journal> {
        let len = cap
            .max(HEADER)
            .checked_next_power_of_two()
            .and_then(|c| c.checked_add(HEADER))
            .ok_or_else(|| io::Error::other("a journal of that size does not fit in memory"))?;
        let fd = memfd(c"ampire-journal", len)?;
        let map = Mapping::new(fd.as_fd(), len)?;
        map.header().epoch.store(epoch, Ordering::Relaxed);
        Ok(Journal { fd, map })
    }

    /// The deadline word of the task the worker runs (0: none), and the epoch it counts from.
    pub(crate) fn deadline(&self) -> (u64, u64) {
        let h = self.map.header();
        (
            h.deadline.load(Ordering::Acquire),
            h.epoch.load(Ordering::Relaxed),
        )
    }

    /// The `memfd`, to hand to the worker.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The batch of `len` bytes at ring position `at` that the worker named in a `Done` frame, if
    /// it lies inside the ring in one piece. The ring bytes are released when the batch drops.
    pub(crate) fn batch(&self, at: u64, len: u64) -> Option<Batch<'_>> {
        let cap = self.map.cap as u64;
        let off = at & (cap - 1);
        let end = at.checked_add(len)?;
        if off + len > cap {
            return None;
        }
        // SAFETY: the worker named these bytes in a `Done` frame: it wrote them before sending
        // the frame and writes them again only after the pool released them, which happens when
        // the `Batch` drops, after the last use of the slice.
        let bytes = unsafe { self.map.bytes(off as usize, len as usize) };
        Some(Batch {
            journal: self,
            bytes,
            end,
        })
    }

    /// The ring from position `at` to its end: where the results of the batch a dead worker was
    /// writing lie.
    pub(crate) fn after_death(&self, at: u64) -> &[u8] {
        let off = (at % self.map.cap as u64) as usize;
        // SAFETY: called only once the worker is dead (its exit was observed), so nothing writes
        // the ring any more; the pool never writes ring bytes.
        unsafe { self.map.bytes(off, self.map.cap - off) }
    }

    /// Gives the ring up to position `upto` back to the worker, and wakes it if it waits for room.
    fn release(&self, upto: u64) {
        let h = self.map.header();
        // SeqCst on both sides: the worker sets `waiting`, then reads `tail`; we set `tail`, then
        // read `waiting`. One of us sees the other's store. Batches are released in the order
        // they were written, so `tail` only grows.
        h.tail.store(upto, Ordering::SeqCst);
        if h.waiting.load(Ordering::SeqCst) != 0 {
            h.wake.fetch_add(1, Ordering::SeqCst);
            futex_wake(&h.wake);
        }
    }

    /// The header as the worker left it. Meaningful once the worker is dead.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let h = self.map.header();
        let done = h.done.load(Ordering::Acquire);
        let batch = (done != BETWEEN).then(|| {
            (
                h.job.load(Ordering::Relaxed),
                h.first.load(Ordering::Relaxed) as u32,
                h.start.load(Ordering::Relaxed),
                done as u32,
            )
        });
        let pending = (h.pending.load(Ordering::Acquire) as usize).min(RECORDS);
        let ended = h.records[..pending]
            .iter()
            .map(|r| {
                let counts = r[1].load(Ordering::Relaxed);
                Record {
                    job: r[0].load(Ordering::Relaxed),
                    first: counts as u32,
                    values: (counts >> 32) as u32,
                    at: r[2].load(Ordering::Relaxed),
                    len: r[3].load(Ordering::Relaxed),
                }
            })
            .collect();
        Snapshot { ended, batch }
    }

    /// The results of a batch a dead worker recorded, if they lie inside the ring in one piece.
    pub(crate) fn recorded(&self, r: &Record) -> Option<&[u8]> {
        let cap = self.map.cap as u64;
        let off = r.at & (cap - 1);
        (off.checked_add(r.len)? <= cap).then(|| {
            // SAFETY: as for `after_death`: the worker is dead, nothing writes the ring.
            unsafe { self.map.bytes(off as usize, r.len as usize) }
        })
    }

    /// Copies of the batches a *live* worker has ended and not yet sent (see `Record`), with
    /// their results: what the pool takes itself when the worker holds them too long (it runs a
    /// job that takes long, and sends nothing). `None` if the worker flushed while they were
    /// read: those frames are on their way.
    pub(crate) fn held(&self) -> Option<Vec<(Record, Vec<u8>)>> {
        let h = self.map.header();
        let before = h.flushes.load(Ordering::Acquire);
        let pending = (h.pending.load(Ordering::Acquire) as usize).min(RECORDS);
        let cap = self.map.cap as u64;
        let mut held = Vec::with_capacity(pending);
        for r in &h.records[..pending] {
            let counts = r[1].load(Ordering::Relaxed);
            let record = Record {
                job: r[0].load(Ordering::Relaxed),
                first: counts as u32,
                values: (counts >> 32) as u32,
                at: r[2].load(Ordering::Relaxed),
                len: r[3].load(Ordering::Relaxed),
            };
            let off = record.at & (cap - 1);
            if off.saturating_add(record.len) > cap {
                return None;
            }
            let mut bytes = vec![0u8; record.len as usize];
            // The worker may write these bytes again once it has flushed (which the count
            // tells below), so they are read as a shared region another process may change:
            // volatile reads, whose value is used only if the count did not move.
            let src = self.map.base.as_ptr().wrapping_add(HEADER + off as usize);
            for (i, b) in bytes.iter_mut().enumerate() {
                // SAFETY: `src + i` lies inside the mapping (checked above) and is aligned for
                // a byte; a volatile read of shared memory cannot tear a byte.
                *b = unsafe { std::ptr::read_volatile(src.add(i)) };
            }
            held.push((record, bytes));
        }
        std::sync::atomic::fence(Ordering::Acquire);
        (h.flushes.load(Ordering::Relaxed) == before).then_some(held)
    }

    /// The sequence number of the last job the worker claimed (started or skipped).
    pub(crate) fn claimed(&self) -> u8 {
        self.map.header().claim.load(Ordering::Acquire) as u8
    }

    /// Takes back every job after `last_claimed` up to and including `upto` (sequence numbers), if
    /// the worker has still claimed no job after `last_claimed`: it will skip them when they come.
    /// `false` if the worker claimed another job meanwhile (ask again).
    pub(crate) fn revoke(&self, last_claimed: u8, upto: u8) -> bool {
        let h = self.map.header();
        let w = h.claim.load(Ordering::Acquire);
        if w as u8 != last_claimed {
            return false;
        }
        let count = upto.wrapping_sub(last_claimed) as u32;
        if count == 0 || count as usize > MAX_QUEUED {
            return count == 0;
        }
        let bits = ((1u64 << count) - 1) << 8;
        h.claim
            .compare_exchange(w, w | bits, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A batch of results in the ring, released to the worker when dropped.
pub(crate) struct Batch<'a> {
    journal: &'a Journal,
    bytes: &'a [u8],
    end: u64,
}

impl std::ops::Deref for Batch<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.journal.release(self.end);
    }
}

/// The worker's side of its journal.
pub(crate) struct Writer {
    map: Mapping,
    /// `cap - 1`: the ring's size is a power of two.
    mask: u64,
    /// Where the next result byte goes.
    head: u64,
    /// How far the head may go in one piece: the lap's end, or what the pool has released.
    limit: u64,
    /// `tail` as last read.
    tail: u64,
    /// The ring was empty when the head moved here: nothing before it is in use.
    base: u64,
}

impl Writer {
    /// Maps the journal the pool handed over.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Writer> {
        let len = nix::sys::stat::fstat(&fd)?.st_size as usize;
        let map = Mapping::new(fd.as_fd(), len)?;
        let h = map.header();
        let tail = h.tail.load(Ordering::Acquire);
        if !map.cap.is_power_of_two() {
            return Err(io::Error::other("a journal's ring is a power of two"));
        }
        let mut w = Writer {
            mask: map.cap as u64 - 1,
            head: tail,
            limit: tail,
            tail,
            base: tail,
            map,
        };
        w.bound();
        Ok(w)
    }

    /// The time the pool's deadlines count from.
    pub(crate) fn epoch(&self) -> u64 {
        self.map.header().epoch.load(Ordering::Relaxed)
    }

    /// Publishes the deadline word of the task that starts (0 when none runs).
    #[inline(always)]
    pub(crate) fn set_deadline(&self, word: u64) {
        self.map.header().deadline.store(word, Ordering::Release);
    }

    /// Claims job `seq` (per-worker sequence numbers, in the order the jobs arrive): `false` if
    /// the pool took it back, and it must be skipped.
    pub(crate) fn claim(&self, seq: u8) -> bool {
        let h = self.map.header();
        let mut w = h.claim.load(Ordering::Acquire);
        loop {
            let shift = seq.wrapping_sub(w as u8) as u32;
            let mask = w >> 8;
            let revoked = shift >= 1 && (mask >> (shift - 1)) & 1 == 1;
            let rest = mask.checked_shr(shift).unwrap_or(0);
            let next = seq as u64 | (rest << 8);
            match h
                .claim
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return !revoked,
                Err(now) => w = now,
            }
        }
    }

    /// Starts a batch: task `first` of `job` onwards, with results from the head. Returns where
    /// its results start.
    pub(crate) fn begin(&mut self, job: u64, first: u32) -> u64 {
        if self.head & self.mask >= COMPACT_AT {
            // Far into the lap: back to the ring's start if at least half as much is free there.
            self.refresh();
            let lap = self.lap_end();
            if self.free_from() + self.mask + 1 >= lap + COMPACT_AT / 2 {
                self.head = lap;
            }
            self.bound();
        }
        let h = self.map.header();
        h.done.store(BETWEEN, Ordering::Relaxed);
        h.job.store(job, Ordering::Relaxed);
        h.first.store(first as u64, Ordering::Relaxed);
        h.start.store(self.head, Ordering::Relaxed);
        h.done.store(0, Ordering::Release);
        self.head
    }

    /// Records ended batch number `n` since the last flush (`n < RECORDS`): its frame may not
    /// reach the pool if the worker dies before it flushes.
    pub(crate) fn record(&self, n: usize, r: Record) {
        let h = self.map.header();
        let slot = &h.records[n];
        slot[0].store(r.job, Ordering::Relaxed);
        slot[1].store(r.first as u64 | (r.values as u64) << 32, Ordering::Relaxed);
        slot[2].store(r.at, Ordering::Relaxed);
        slot[3].store(r.len, Ordering::Relaxed);
        h.pending.store(n as u64 + 1, Ordering::Release);
    }

    /// Every batch's frame has been written to the pool.
    pub(crate) fn flushed(&self) {
        let h = self.map.header();
        h.flushes.fetch_add(1, Ordering::Release);
        h.pending.store(0, Ordering::Release);
    }

    /// Records that `done` tasks of the current batch have their results in the ring.
    #[inline(always)]
    pub(crate) fn commit(&self, done: u32) {
        self.map.header().done.store(done as u64, Ordering::Release);
    }

    /// Where the next result byte goes.
    #[inline(always)]
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    fn free_from(&self) -> u64 {
        self.tail.max(self.base)
    }

    /// Where the head's lap ends (the next lap starts).
    fn lap_end(&self) -> u64 {
        (self.head | self.mask) + 1
    }

    /// Sets how far the head may go in one piece, after the head or `tail` moved.
    fn bound(&mut self) {
        self.limit = self.lap_end().min(self.free_from() + self.mask + 1);
    }

    /// How many bytes may be written at the head in one piece.
    fn room(&self) -> usize {
        (self.limit - self.head) as usize
    }

    /// The bytes that may be written at the head, at most `max` of them.
    #[inline(always)]
    pub(crate) fn space(&mut self, max: usize) -> &mut [u8] {
        let len = self.room().min(max);
        let off = (self.head & self.mask) as usize;
        // SAFETY: `limit` keeps the range inside the ring (the lap's end) and before what the
        // pool has not released (`tail + cap`): bytes the pool no longer reads. The borrow of
        // `self` keeps it the only reference.
        unsafe { self.map.bytes_mut(off, len) }
    }

    /// The bytes written since ring position `start` (which the head has not passed by a lap).
    pub(crate) fn written(&self, start: u64) -> &[u8] {
        let off = (start & self.mask) as usize;
        let len = (self.head - start) as usize;
        // SAFETY: the worker wrote these bytes itself, between `start` and the head, inside one
        // lap (a batch never crosses the ring's end); the pool reads them only once named in a
        // `Done` frame, and only reads.
        unsafe { self.map.bytes(off, len) }
    }

    /// Moves the head back to `start`, a batch's start: its results reached the pool another
    /// way, and the bytes are the worker's again.
    pub(crate) fn rewind(&mut self, start: u64) {
        debug_assert!(start <= self.head);
        self.head = start;
    }

    /// `n` bytes were written at the head.
    #[inline(always)]
    pub(crate) fn advance(&mut self, n: usize) {
        self.head += n as u64;
    }

    /// Whether every byte written has been released.
    #[cfg(test)]
    fn is_empty(&mut self) -> bool {
        self.refresh();
        self.free_from() == self.head
    }

    fn refresh(&mut self) {
        self.tail = self.map.header().tail.load(Ordering::SeqCst);
        self.bound();
    }

    /// Between batches: makes room for `need` bytes in one piece at the head (see [`Room`]),
    /// waiting for the pool to release results while there is none. `false` if `need` is more than
    /// the ring can ever hold in one piece.
    pub(crate) fn make_room(&mut self, need: usize) -> bool {
        loop {
            match self.try_room(need) {
                Room::Ready => return true,
                Room::Never => return false,
                Room::Wait => self.wait(),
            }
        }
    }

    /// Between batches: makes room for `need` bytes in one piece at the head if it can without
    /// waiting. The head moves to the ring's start (a new lap) when the ring is empty, or when the
    /// rest of this lap is too short and the start is free.
    pub(crate) fn try_room(&mut self, need: usize) -> Room {
        let cap = self.mask + 1;
        if need as u64 > cap {
            return Room::Never;
        }
        self.refresh();
        let lap = self.lap_end();
        let in_lap = self.head & self.mask != 0;
        if self.free_from() == self.head && in_lap {
            // Empty: start the next lap, whose first pages are those already in use.
            self.head = lap;
            self.base = lap;
            self.bound();
        }
        if self.room() >= need {
            return Room::Ready;
        }
        if in_lap && self.free_from() + cap >= lap + need as u64 {
            self.head = lap;
            self.bound();
            return Room::Ready;
        }
        Room::Wait
    }

    /// Blocks until the pool releases more of the ring.
    fn wait(&mut self) {
        let h = self.map.header();
        loop {
            let ticket = h.wake.load(Ordering::SeqCst);
            h.waiting.store(1, Ordering::SeqCst);
            let tail = h.tail.load(Ordering::SeqCst);
            if tail != self.tail {
                h.waiting.store(0, Ordering::SeqCst);
                self.tail = tail;
                self.bound();
                return;
            }
            futex_wait(&h.wake, ticket);
            h.waiting.store(0, Ordering::SeqCst);
        }
    }
}

/// Whether there is room in the ring for what a worker must write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// At the head, now.
    Ready,
    /// Once the pool releases some results.
    Wait,
    /// Never: it is larger than the ring.
    Never,
}

/// Sleeps while `word` holds `expected` (or until woken). The word is in a `MAP_SHARED` mapping
/// of another process too, so the futex is not process-private.
fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; a null timeout waits without bound. Every
    // outcome (woken, EAGAIN because the word changed, EINTR) leads the caller to look again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes every process sleeping on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE only reads its address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cap: usize) -> (Journal, Writer) {
        let j = Journal::new(cap, 0).unwrap();
        let w = Writer::open(j.fd().try_clone_to_owned().unwrap()).unwrap();
        (j, w)
    }

    #[test]
    fn results_written_at_the_head_are_read_back_from_their_batch() {
        let (j, mut w) = pair(4096);
        let at = w.begin(1, 0);
        w.space(100)[..5].copy_from_slice(b"hello");
        w.advance(5);
        w.commit(1);
        let snap = j.snapshot();
        assert_eq!(snap.batch, Some((1, 0, at, 1)));
        assert_eq!(&*j.batch(at, 5).unwrap(), b"hello");
        assert!(
            j.batch(4000, 200).is_none(),
            "a batch crossing the ring's end is refused"
        );
        assert!(w.is_empty(), "dropping the batch released it");
    }

    #[test]
    fn ended_batches_are_recorded_until_the_frames_are_flushed() {
        let (j, mut w) = pair(4096);
        let at = w.begin(7, 0);
        w.space(10)[..3].copy_from_slice(b"abc");
        w.advance(3);
        w.commit(2);
        let r = Record {
            job: 7,
            first: 0,
            values: 2,
            at,
            len: 3,
        };
        w.record(0, r);
        w.begin(7, 2);
        let snap = j.snapshot();
        assert_eq!(snap.ended, [r]);
        assert_eq!(j.recorded(&snap.ended[0]), Some(&b"abc"[..]));
        assert_eq!(snap.batch, Some((7, 2, at + 3, 0)));
        w.flushed();
        assert!(j.snapshot().ended.is_empty());
    }

    #[test]
    fn the_ring_wraps_and_waits_for_released_room() {
        let (j, mut w) = pair(4096);
        assert_eq!(w.try_room(3000), Room::Ready);
        let first = w.begin(1, 0);
        w.advance(3000);
        // 1096 bytes are left to the end: a batch of 2000 starts the next lap only once the
        // first 2000 bytes are released.
        let held = j.batch(first, 3000).unwrap();
        assert_eq!(w.try_room(2000), Room::Wait);
        assert_eq!(
            w.try_room(1000),
            Room::Ready,
            "what is left of the lap is free"
        );
        let waiter = std::thread::spawn(move || {
            assert!(w.make_room(2000));
            w.head()
        });
        drop(held);
        assert_eq!(
            waiter.join().unwrap() % 4096,
            0,
            "the next lap starts at the ring's start"
        );
        let (_, mut w) = pair(4096);
        assert_eq!(w.try_room(4097), Room::Never);
        assert!(!w.make_room(4097), "more than the ring holds");
    }

    #[test]
    fn a_revoked_job_is_skipped_and_a_claimed_one_cannot_be_revoked() {
        let (j, w) = pair(4096);
        assert!(w.claim(1));
        assert_eq!(j.claimed(), 1);
        // Jobs 2 to 4 wait; the pool takes back 3 and 4 after the worker claimed 2.
        assert!(!j.revoke(0, 4), "the worker has claimed job 1 since");
        assert!(w.claim(2));
        assert!(j.revoke(2, 4));
        assert!(!w.claim(3));
        assert!(!w.claim(4));
        assert!(w.claim(5), "later jobs run");
        // Sequence numbers wrap.
        let (j, w) = pair(4096);
        for seq in 1..=255u8 {
            assert!(w.claim(seq));
        }
        assert!(j.revoke(255, 2));
        assert!(!w.claim(0) && !w.claim(1) && !w.claim(2));
        assert!(w.claim(3));
    }
}
