//! Fuzzing the decoders of frames and messages on stable Rust: valid messages of every kind,
//! encoded, then mutated (bits flipped, bytes overwritten, runs inserted and cut, lengths
//! replaced, frames spliced), and purely random bytes. Each input is read to its end as frames
//! of both directions' messages. What must hold: no panic, only typed errors, and no allocation
//! larger than the frame limit allows (plus the reader's one read beyond it).
//!
//! `AMPIRE_FUZZ_ITERS` sets how many inputs (default 20,000, a second or two); a long run:
//!
//! ```text
//! AMPIRE_FUZZ_ITERS=10000000 cargo test --release --lib proto::fuzz
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::frame::{self, Reader};
use super::message::Event;
use super::{Batch, Failure, Fault, FromWorker, Span, ToWorker};
use crate::sys::image::Identity;
use crate::sys::probe::largest_allocation;

/// The frame limit the inputs are read with.
const MAX: usize = 64 * 1024;
/// What a reader may allocate: its buffer holds one frame and one read (64 KiB) beyond it.
const ALLOWED: usize = 4 + MAX + 64 * 1024;

/// xorshift64*: small, fast and the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Up to `most - 1` random bytes.
    fn some_bytes(&mut self, most: u64) -> Vec<u8> {
        let n = self.below(most) as usize;
        self.bytes(n)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn text(&mut self) -> String {
        let n = self.below(40) as usize;
        (0..n)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
    fn maybe<T>(&mut self, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
        (self.below(2) == 0).then(|| f(self))
    }
}

fn failure(r: &mut Rng) -> Failure {
    Failure {
        fault: if r.below(2) == 0 {
            Fault::Panic
        } else {
            Fault::Codec
        },
        message: r.text(),
        location: r.maybe(Rng::text),
        backtrace: r.maybe(Rng::text),
        input: r.maybe(Rng::text),
    }
}

fn span(r: &mut Rng) -> Span {
    Span {
        offset: r.next() >> r.below(64),
        len: r.next() >> r.below(64),
    }
}

fn identity(r: &mut Rng) -> Identity {
    Identity {
        build_id: r.some_bytes(33),
        exe: (r.next(), r.next()),
        anchor_offset: r.next(),
    }
}

fn to_worker(r: &mut Rng) -> ToWorker {
    match r.below(3) {
        0 => ToWorker::Setup {
            worker_id: r.next() as u32,
            setup: r.next() as i64,
            shared: r.below(2) == 0,
            arena: r.maybe(span),
            identity: identity(r),
            max_frame: r.next(),
            fault: r.maybe(|r| r.next() as i32),
            exit: r.maybe(|r| r.next() as i64),
            lifespan: r.maybe(Rng::next),
            max_memory: r.maybe(Rng::next),
            insights: r.next() as u8,
        },
        1 => ToWorker::Task {
            id: r.next(),
            seq: r.next() as u8,
            hold: r.below(2) == 0,
            entry: r.next() as i64,
            count: r.next() as u32,
            arena: r.maybe(span),
            timeout_us: r.next(),
        },
        _ => ToWorker::Shutdown {
            exit: r.maybe(|r| r.next() as i64),
        },
    }
}

fn from_worker(r: &mut Rng) -> FromWorker {
    let batch = |r: &mut Rng| Batch {
        id: r.next(),
        first: r.next() as u32,
        values: r.next() as u32,
        at: span(r),
        busy_ns: r.next(),
        cpu_ns: r.next(),
    };
    match r.below(11) {
        0 => FromWorker::Hello {
            magic: r.next() as u32,
            version: r.next() as u16,
            pid: r.next() as u32,
            identity: identity(r),
        },
        1 => FromWorker::Ready,
        2 => FromWorker::InitFailed(Box::new(failure(r))),
        3 => FromWorker::Done(batch(r)),
        4 => FromWorker::Failed(batch(r), Box::new(failure(r))),
        5 => FromWorker::Exit(r.maybe(|r| Box::new(failure(r)))),
        6 => FromWorker::Fatal(r.text()),
        8 => FromWorker::Retiring {
            memory: r.below(2) == 0,
        },
        9 => FromWorker::Event(Event::Slow {
            id: r.next(),
            index: r.next() as u32,
            ns: r.next(),
            cpu_ns: r.maybe(Rng::next),
            peak_memory: r.maybe(Rng::next),
            input: r.text(),
        }),
        7 => FromWorker::Event(Event::Progress {
            bar: r.next(),
            parent: r.maybe(Rng::next),
            label: r.text(),
            done: r.next(),
            total: r.maybe(Rng::next),
            failed: r.next(),
            closed: r.below(2) == 0,
        }),
        _ => FromWorker::Event(Event::Output {
            stderr: r.below(2) == 0,
            line: r.some_bytes(100),
        }),
    }
}

/// A few valid frames of both directions, back to back, with small bodies.
fn frames(r: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + r.below(4) {
        let body = r.some_bytes(64);
        match r.below(2) {
            0 => frame::encode(&mut out, &to_worker(r), &body),
            _ => frame::encode(&mut out, &from_worker(r), &body),
        }
    }
    out
}

fn mutate(r: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + r.below(4) {
        let at = r.below(bytes.len() as u64 + 1) as usize;
        match r.below(8) {
            0 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] ^= 1 << r.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] = r.next() as u8;
            }
            2 => {
                let run = r.some_bytes(16);
                bytes.splice(at..at, run);
            }
            3 => {
                let end = (at + r.below(16) as usize).min(bytes.len());
                bytes.drain(at..end);
            }
            4 => bytes.truncate(at),
            5 if at + 4 <= bytes.len() => {
                // A length field (either kind) set to something extreme.
                let len =
                    [0u32, 1, 3, 4, 8, MAX as u32, MAX as u32 + 1, u32::MAX][r.below(8) as usize];
                bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
            6 => {
                // A large varint where a length (of a string, a list) may be read.
                let big = [0xff, 0xff, 0xff, 0x0f];
                let n = 1 + r.below(4) as usize;
                bytes.splice(at..at, big[4 - n..].iter().copied());
            }
            _ => {
                let more = frames(r);
                bytes.splice(at..at, more);
            }
        }
    }
}

/// Reads every frame of `bytes` as headers of type `H`, to the end or to the first error.
fn read_all<H: for<'de> serde::Deserialize<'de>>(bytes: &[u8]) -> usize {
    let mut rd = Reader::new(bytes, MAX);
    let mut n = 0;
    while let Ok(Some(frame)) = rd.next::<H>() {
        let _ = rd.body(frame.body);
        n += 1;
    }
    n
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let iters: u64 = std::env::var("AMPIRE_FUZZ_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut r = Rng(0x5eed_1234_abcd_ef01);
    let (mut frames_read, mut largest) = (0usize, 0usize);
    for i in 0..iters {
        let mut input = if i % 8 == 0 {
            r.some_bytes(256)
        } else {
            frames(&mut r)
        };
        if i % 16 != 1 {
            mutate(&mut r, &mut input);
        }
        let (read, size) = largest_allocation(|| {
            catch_unwind(AssertUnwindSafe(|| {
                read_all::<ToWorker>(&input) + read_all::<FromWorker>(&input)
            }))
        });
        let read = read.unwrap_or_else(|_| panic!("a decoder panicked on input {i}: {input:?}"));
        frames_read += read;
        largest = largest.max(size);
        assert!(
            size <= ALLOWED,
            "input {i} made a decoder allocate {size} bytes: {input:?}"
        );
    }
    eprintln!(
        "fuzz: {iters} inputs, {frames_read} frames decoded, largest allocation {largest} bytes"
    );
    assert!(frames_read > 0);
}

#[test]
fn unmutated_frames_decode_to_what_was_encoded() {
    let mut r = Rng(7);
    for _ in 0..2000 {
        let msg = from_worker(&mut r);
        let mut bytes = Vec::new();
        frame::encode(&mut bytes, &msg, b"body");
        let mut rd = Reader::new(&bytes[..], MAX);
        let frame = rd.next::<FromWorker>().unwrap().unwrap();
        assert_eq!(format!("{:?}", frame.header), format!("{msg:?}"));
        assert_eq!(rd.body(frame.body), b"body");
    }
}

#[test]
fn a_header_claiming_a_huge_byte_field_allocates_nothing_of_that_size() {
    // An `Output` event whose line says it is a gigabyte long, in a frame of a few bytes.
    let event = FromWorker::Event(Event::Output {
        stderr: false,
        line: Vec::new(),
    });
    let mut header = postcard::to_stdvec(&event).unwrap();
    assert_eq!(header.pop(), Some(0), "the line's length comes last");
    header.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x04]);
    let mut bytes = ((4 + header.len()) as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&header);
    let (n, size) = largest_allocation(|| read_all::<FromWorker>(&bytes));
    assert_eq!(n, 0);
    assert!(size <= ALLOWED, "{size} bytes");
}
