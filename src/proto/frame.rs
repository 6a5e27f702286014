//! Framing: every message is one frame.
//!
//! ```text
//! [u32 LE frame length][u32 LE header length][postcard header][body bytes]
//! ```
//!
//! The frame length counts everything after itself. The header is a postcard-encoded
//! [`ToWorker`](super::ToWorker) or [`FromWorker`](super::FromWorker); the body carries bulk data
//! (a chunk of serialised inputs, the serialised results, a shared object) so that it is never
//! copied into the header. Both sides reject a frame longer than the pool's `max_frame_len`, and a
//! header that does not decode.

use std::io::{self, Read, Write};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Room a frame keeps for its prefix and header: a body may take the rest of `max_frame_len`.
pub(crate) const HEADER_ROOM: usize = 256;

/// The default largest frame either side accepts.
pub(crate) const DEFAULT_MAX_FRAME: usize = 1 << 30;
const PREFIX: usize = 8;

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends the prefix and header of a frame whose body of `body_len` bytes follows.
pub(crate) fn encode_head<H: Serialize>(out: &mut Vec<u8>, header: &H, body_len: usize) {
    let at = out.len();
    out.extend_from_slice(&[0; PREFIX]);
    let mut v = postcard::to_extend(header, std::mem::take(out)).expect("headers always serialise");
    let hlen = v.len() - at - PREFIX;
    let flen = (PREFIX - 4 + hlen + body_len) as u32;
    v[at..at + 4].copy_from_slice(&flen.to_le_bytes());
    v[at + 4..at + 8].copy_from_slice(&(hlen as u32).to_le_bytes());
    *out = v;
}

/// Appends one whole frame to `out`.
pub(crate) fn encode<H: Serialize>(out: &mut Vec<u8>, header: &H, body: &[u8]) {
    encode_head(out, header, body.len());
    out.extend_from_slice(body);
}

/// A decoded frame: the header and where its body lies in the reader's buffer.
pub(crate) struct Frame<H> {
    pub header: H,
    pub body: Range<usize>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The most a reader asks for at once beyond the rest of the current frame.
const MIN_READ: usize = 64 * 1024;

/// A buffer of incoming bytes split into frames; shared by the blocking and the async reader.
struct Buffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl Buffer {
    fn new(max: usize) -> Self {
        Buffer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
        }
    }

    /// The byte length of the next frame if it is complete in the buffer; `Err` if it is too long.
    fn complete(&self) -> io::Result<Option<usize>> {
        let have = self.end - self.start;
        if have < 4 {
            return Ok(None);
        }
        let flen = le32(&self.buf[self.start..]) as usize;
        if flen > self.max {
            return Err(bad(format!(
                "frame of {flen} bytes exceeds the limit of {} bytes",
                self.max
            )));
        }
        if flen < 4 {
            return Err(bad("frame shorter than its header length"));
        }
        Ok((have >= 4 + flen).then_some(4 + flen))
    }

    /// Makes room for at least `want` more bytes after `end`.
    fn reserve(&mut self, want: usize) {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < want) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            // Doubling, but never past what the largest frame and one read beyond it need.
            let most = (4 + self.max).saturating_add(MIN_READ);
            let new_len = (self.end + want).max((self.buf.len() * 2).min(most));
            self.buf.resize(new_len, 0);
        }
    }

    /// How many bytes to read next: the rest of the current frame, and at least the buffer's
    /// own size (from 4 KiB up to 64 KiB). A new buffer starts at a page: the first frames of
    /// a worker (hello, set-up, small tasks) then touch one page, not sixteen, which in a
    /// `Fork` child are copy-on-write faults on the critical path of its start.
    fn want(&self) -> usize {
        let min = self.buf.len().clamp(4096, MIN_READ);
        let have = self.end - self.start;
        if have >= 4 {
            let flen = le32(&self.buf[self.start..]) as usize;
            (4 + flen).saturating_sub(have).max(min)
        } else {
            min
        }
    }

    fn take<H: for<'de> Deserialize<'de>>(&mut self, len: usize) -> io::Result<Frame<H>> {
        let at = self.start;
        self.start += len;
        let hlen = le32(&self.buf[at + 4..]) as usize;
        if PREFIX + hlen > len {
            return Err(bad("header length exceeds the frame"));
        }
        let header = postcard::from_bytes(&self.buf[at + PREFIX..at + PREFIX + hlen])
            .map_err(|e| bad(format!("malformed frame header: {e}")))?;
        Ok(Frame {
            header,
            body: at + PREFIX + hlen..at + len,
        })
    }
}

impl Buffer {
    /// The next whole frame, if it is already buffered.
    fn frame<H: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<Frame<H>>> {
        match self.complete()? {
            Some(len) => self.take(len).map(Some),
            None => Ok(None),
        }
    }

    /// Where the next read goes.
    fn space(&mut self) -> &mut [u8] {
        let want = self.want();
        self.reserve(want);
        &mut self.buf[self.end..]
    }

    /// Records a read of `n` bytes; `Ok(false)` at a clean end of stream.
    fn filled(&mut self, n: usize) -> io::Result<bool> {
        if n == 0 {
            return if self.end == self.start {
                Ok(false)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame",
                ))
            };
        }
        self.end += n;
        Ok(true)
    }
}

/// Blocking frame reader (the worker side).
pub(crate) struct Reader<R> {
    io: R,
    b: Buffer,
}

impl<R: Read> Reader<R> {
    pub(crate) fn new(io: R, max: usize) -> Self {
        Reader {
            io,
            b: Buffer::new(max),
        }
    }

    /// Whether a whole frame is already buffered (the next `next` does not read).
    pub(crate) fn has_frame(&self) -> bool {
        !matches!(self.b.complete(), Ok(None))
    }

    /// Sets the largest frame accepted from now on.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.b.max = max;
    }

    /// The next frame, or `None` at end of stream.
    pub(crate) fn next<H: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<Frame<H>>> {
        loop {
            if let Some(frame) = self.b.frame()? {
                return Ok(Some(frame));
            }
            let n = match self.io.read(self.b.space()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if !self.b.filled(n)? {
                return Ok(None);
            }
        }
    }

    pub(crate) fn body(&self, r: Range<usize>) -> &[u8] {
        &self.b.buf[r]
    }
}

/// Async frame reader (the pool side). [`AsyncReader::next`] is cancel-safe: all state lives in
/// the reader and each await is a single `read`.
pub(crate) struct AsyncReader<R> {
    io: R,
    b: Buffer,
}

impl<R: AsyncRead + Unpin> AsyncReader<R> {
    pub(crate) fn new(io: R, max: usize) -> Self {
        AsyncReader {
            io,
            b: Buffer::new(max),
        }
    }

    pub(crate) async fn next<H: for<'de> Deserialize<'de>>(
        &mut self,
    ) -> io::Result<Option<Frame<H>>> {
        loop {
            if let Some(frame) = self.b.frame()? {
                return Ok(Some(frame));
            }
            let n = self.io.read(self.b.space()).await?;
            if !self.b.filled(n)? {
                return Ok(None);
            }
        }
    }

    pub(crate) fn body(&self, r: Range<usize>) -> &[u8] {
        &self.b.buf[r]
    }
}

/// Writes `head` then `body` (the body is not copied into the head buffer).
pub(crate) async fn write_parts<W: AsyncWrite + Unpin>(
    io: &mut W,
    head: &[u8],
    body: &[u8],
) -> io::Result<()> {
    io.write_all(head).await?;
    if !body.is_empty() {
        io.write_all(body).await?;
    }
    Ok(())
}

/// Where a [`Writer`]'s frames go: written whole, parts in order.
pub(crate) trait FrameIo {
    /// Writes `parts` back to back, with nothing of anyone else's between them.
    fn write_frames(&mut self, parts: &[&[u8]]) -> io::Result<()>;
}

impl<W: Write> FrameIo for W {
    fn write_frames(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        parts.iter().try_for_each(|p| self.write_all(p))
    }
}

/// A stream that several threads of a worker write frames to: its loop, and whatever else sends
/// events (a pool running inside one of its tasks). A lock around each write of whole frames
/// keeps them whole.
#[derive(Debug)]
pub(crate) struct Shared(std::sync::Arc<SharedInner>);

#[derive(Debug)]
pub(crate) struct SharedInner {
    io: std::fs::File,
    lock: std::sync::Mutex<()>,
}

impl Shared {
    pub(crate) fn new(io: std::fs::File) -> Shared {
        Shared(std::sync::Arc::new(SharedInner {
            io,
            lock: std::sync::Mutex::new(()),
        }))
    }

    /// Another handle to the same stream.
    pub(crate) fn handle(&self) -> Shared {
        Shared(self.0.clone())
    }

    /// Runs `f` while no other frame can be written: it may write whole frames to the stream it
    /// is given, and end the process (no frame is left half-written).
    pub(crate) fn hold<R>(&self, f: impl FnOnce(&std::fs::File) -> R) -> R {
        let _whole = self
            .0
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&self.0.io)
    }
}

impl FrameIo for Shared {
    fn write_frames(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let _whole = self
            .0
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        parts.iter().try_for_each(|p| (&self.0.io).write_all(p))
    }
}

/// Blocking frame writer (the worker side): frames gather in a buffer until [`Writer::flush`].
pub(crate) struct Writer<W> {
    io: W,
    buf: Vec<u8>,
}

impl<W: FrameIo> Writer<W> {
    pub(crate) fn new(io: W) -> Self {
        Writer {
            io,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    pub(crate) fn send<H: Serialize>(&mut self, header: &H, body: &[u8]) -> io::Result<()> {
        if body.len() > 64 * 1024 {
            encode_head(&mut self.buf, header, body.len());
            let sent = self.io.write_frames(&[&self.buf, body]);
            self.buf.clear();
            return sent;
        }
        encode(&mut self.buf, header, body);
        if self.buf.len() > 256 * 1024 {
            self.flush()
        } else {
            Ok(())
        }
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.io.write_frames(&[&self.buf])?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ToWorker;

    fn read_all(bytes: &[u8], max: usize) -> io::Result<Vec<(ToWorker, Vec<u8>)>> {
        let mut rd = Reader::new(bytes, max);
        let mut out = Vec::new();
        while let Some(frame) = rd.next::<ToWorker>()? {
            let body = rd.body(frame.body).to_vec();
            out.push((frame.header, body));
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip_back_to_back_with_bodies_of_any_size() {
        let mut bytes = Vec::new();
        let big = vec![9u8; 300 * 1024];
        encode(
            &mut bytes,
            &ToWorker::Task {
                id: 1,
                seq: 1,
                hold: false,
                entry: -5,
                count: 2,
                arena: None,
                timeout_us: 0,
            },
            b"ab",
        );
        encode(
            &mut bytes,
            &ToWorker::Task {
                id: 2,
                seq: 2,
                hold: false,
                entry: 7,
                count: 0,
                arena: None,
                timeout_us: 0,
            },
            &[],
        );
        encode(
            &mut bytes,
            &ToWorker::Task {
                id: 3,
                seq: 3,
                hold: false,
                entry: 7,
                count: 1,
                arena: None,
                timeout_us: 0,
            },
            &big,
        );
        encode(&mut bytes, &ToWorker::Shutdown { exit: None }, &[]);
        let frames = read_all(&bytes, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(frames.len(), 4);
        assert!(matches!(
            frames[0].0,
            ToWorker::Task {
                id: 1,
                seq: 1,
                hold: false,
                entry: -5,
                count: 2,
                arena: None,
                ..
            }
        ));
        assert_eq!(frames[0].1, b"ab");
        assert!(frames[1].1.is_empty());
        assert_eq!(frames[2].1, big);
        assert!(matches!(frames[3].0, ToWorker::Shutdown { exit: None }));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_read() {
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            &ToWorker::Task {
                id: 1,
                seq: 1,
                hold: false,
                entry: 0,
                count: 1,
                arena: None,
                timeout_us: 0,
            },
            &[0; 4096],
        );
        let e = read_all(&bytes, 1024).unwrap_err();
        assert!(
            e.to_string().contains("exceeds the limit of 1024 bytes"),
            "{e}"
        );
    }

    #[test]
    fn malformed_and_truncated_frames_are_errors() {
        // A header that is not a message.
        let mut bytes = 12u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&[0xff; 8]);
        assert!(
            read_all(&bytes, 1024)
                .unwrap_err()
                .to_string()
                .contains("malformed frame header")
        );
        // A header length past the end of the frame.
        let mut bytes = 8u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&100u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert!(
            read_all(&bytes, 1024)
                .unwrap_err()
                .to_string()
                .contains("header length exceeds")
        );
        // The stream ends inside a frame.
        let mut bytes = Vec::new();
        encode(&mut bytes, &ToWorker::Shutdown { exit: Some(3) }, b"xyz");
        bytes.pop();
        assert!(
            read_all(&bytes, 1024)
                .unwrap_err()
                .to_string()
                .contains("ended inside a frame")
        );
        // A frame too short to hold its header length.
        assert!(
            read_all(&2u32.to_le_bytes(), 1024)
                .unwrap_err()
                .to_string()
                .contains("shorter")
        );
    }
}
