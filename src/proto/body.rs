//! Bodies: how bulk data travels, inline after a frame's header or in the pool's shared-memory
//! arena, and the serializer sinks that write it.

use std::sync::Arc;

use postcard::ser_flavors::Flavor;
use serde::{Deserialize, Serialize};

use crate::sys::shm::{Arena, Block};

/// Bodies at least this large travel through the pool's shared-memory arena when it has room...
pub(crate) const ARENA_MIN: usize = 64 * 1024;
/// ...and when their items are at least this large (smaller ones go through the pipe, where the
/// bytes cost less than measuring every item first).
const LARGE_ITEM: usize = 4 * 1024;

/// A range of the pool's shared-memory arena (see `sys::shm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Span {
    pub offset: u64,
    pub len: u64,
}

/// The body of a task frame (or of the set-up): inline after the header, or in the arena.
pub(crate) enum Body {
    Inline(Vec<u8>),
    Arena(Block),
}

impl Body {
    pub(crate) fn len(&self) -> usize {
        match self {
            Body::Inline(v) => v.len(),
            Body::Arena(b) => b.len(),
        }
    }

    /// All the body's bytes, wherever they are.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Body::Inline(v) => v,
            Body::Arena(b) => b.bytes(),
        }
    }

    /// Where the body's bytes from `skip` on lie in the arena, if they do.
    pub(crate) fn span(&self, skip: usize) -> Option<Span> {
        match self {
            Body::Inline(_) => None,
            Body::Arena(b) => Some(Span {
                offset: b.offset() + skip as u64,
                len: b.len().saturating_sub(skip) as u64,
            }),
        }
    }

    /// The body's bytes from `skip` on that follow the header in the frame (none for an arena
    /// body).
    pub(crate) fn inline(&self, skip: usize) -> &[u8] {
        match self {
            Body::Inline(v) => v.get(skip..).unwrap_or_default(),
            Body::Arena(_) => &[],
        }
    }
}

/// The size of `value`'s encoding, found without writing it.
pub(crate) fn serialized_size<T: Serialize>(value: &T) -> postcard::Result<usize> {
    let mut ser = postcard::Serializer { output: Count(0) };
    value.serialize(&mut ser)?;
    Ok(ser.output.0)
}

/// A postcard flavor that only counts bytes.
struct Count(usize);

impl postcard::ser_flavors::Flavor for Count {
    type Output = usize;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 += data.len();
        Ok(())
    }

    fn try_push(&mut self, _: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

/// Why [`encode_body`] stopped before the end of its items.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The next item does not fit in what is left of the budget.
    Budget,
    /// The next item alone takes this many bytes, more than the whole budget.
    TooLarge(usize),
    /// The next item fails to serialise.
    Error(postcard::Error),
}

/// A body of the first `taken` items, and why it stopped there if that is not all of them.
pub(crate) struct Encoding {
    pub body: Body,
    pub taken: usize,
    pub stop: Option<Stop>,
}

/// Serialises `items` back to back into a body of at most `budget` bytes: straight into an
/// arena block when the items are large and the arena has room, or else into a vector. It stops
/// before the first item that would not fit, or that fails to serialise.
///
/// The size is estimated from the first and the last item. Large items are measured exactly first
/// (cheap for byte buffers, whose size is their length) and written once, into the block; small
/// ones are written into a vector sized from the estimate, without a second pass.
pub(crate) fn encode_body<T: Serialize>(
    items: &[T],
    arena: Option<&Arc<Arena>>,
    budget: usize,
) -> Encoding {
    // Each item is measured at most once: the first and the last for the estimate, the others
    // only when they go into the arena. (A large shared object is one item: one pass to measure
    // it, one to write it.)
    let first = items.first().map(serialized_size);
    let last = match items.len() {
        0 | 1 => None,
        n => Some(serialized_size(&items[n - 1])),
    };
    let sized = |r: &Option<postcard::Result<usize>>| match r {
        Some(Ok(n)) => *n,
        _ => 0,
    };
    let per_item = sized(&first).max(sized(&last));
    let estimate = per_item.saturating_mul(items.len()).min(budget);
    if let Some(arena) = arena.filter(|_| per_item >= LARGE_ITEM && estimate >= ARENA_MIN) {
        let (mut total, mut taken, mut stop) = (0usize, 0, None);
        for (i, a) in items.iter().enumerate() {
            let size = match (i, &first, &last) {
                (0, Some(known), _) => known.clone(),
                (i, _, Some(known)) if i == items.len() - 1 => known.clone(),
                _ => serialized_size(a),
            };
            match size {
                Ok(n) if total.saturating_add(n) <= budget => {
                    total += n;
                    taken += 1;
                }
                Ok(n) => {
                    stop = Some(if taken == 0 {
                        Stop::TooLarge(n)
                    } else {
                        Stop::Budget
                    });
                    break;
                }
                Err(e) => {
                    stop = Some(Stop::Error(e));
                    break;
                }
            }
        }
        if taken > 0 {
            if let Some(mut block) = arena.alloc(total) {
                let mut ser = postcard::Serializer {
                    output: postcard::ser_flavors::Slice::new(block.bytes_mut()),
                };
                // A value whose size changes between two passes (a `Serialize` impl with side
                // effects) falls back to the vector below.
                let fits = items[..taken].iter().all(|a| a.serialize(&mut ser).is_ok());
                if fits && ser.output.finalize().map(|b| b.len()) == Ok(total) {
                    return Encoding {
                        body: Body::Arena(block),
                        taken,
                        stop,
                    };
                }
            }
        } else if stop.is_some() {
            return Encoding {
                body: Body::Inline(Vec::new()),
                taken,
                stop,
            };
        }
    }
    let mut body = Vec::with_capacity(estimate.saturating_add(estimate / 8).saturating_add(16));
    let mut ser = serializer(&mut body);
    for (i, a) in items.iter().enumerate() {
        // One serializer for the whole body; an item that does not fit, or fails half-way, is
        // cut off again.
        let mark = ser.output.0.len();
        let stop = match a.serialize(&mut ser) {
            Ok(()) if ser.output.0.len() <= budget => continue,
            Ok(()) if i == 0 => Stop::TooLarge(ser.output.0.len() - mark),
            Ok(()) => Stop::Budget,
            Err(e) => Stop::Error(e),
        };
        ser.output.0.truncate(mark);
        return Encoding {
            body: Body::Inline(body),
            taken: i,
            stop: Some(stop),
        };
    }
    Encoding {
        body: Body::Inline(body),
        taken: items.len(),
        stop: None,
    }
}

/// A postcard output that appends to a borrowed `Vec<u8>`, so one serializer can write many
/// values back to back (a chunk of inputs or results) without a call per value.
pub(crate) struct VecSink<'a>(pub &'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecSink<'_> {
    type Output = ();

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Fixed-size fields (`f64`, `f32`, `i64` as bytes) as one store of a known size: 0.8 ns
        // an `f64` against 4 ns through the byte loop below.
        if let Ok(a) = <[u8; 8]>::try_from(data) {
            self.0.extend_from_slice(&a);
        } else if let Ok(a) = <[u8; 4]>::try_from(data) {
            self.0.extend_from_slice(&a);
        } else if data.len() <= 16 {
            // Varints and other small fields: a byte loop beats a call to memcpy per field
            // (which W1's profile showed at a third of the time).
            self.0.reserve(data.len());
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A postcard output that writes into a borrowed slice, and says it is full instead of growing:
/// a worker writes results straight into its journal with it.
pub(crate) struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
    full: bool,
}

impl<'a> SliceSink<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        SliceSink {
            buf,
            len: 0,
            full: false,
        }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> usize {
        self.len
    }

    /// Whether a write did not fit.
    pub(crate) fn is_full(&self) -> bool {
        self.full
    }
}

impl postcard::ser_flavors::Flavor for SliceSink<'_> {
    type Output = ();

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.len + data.len();
        let Some(dst) = self.buf.get_mut(self.len..end) else {
            self.full = true;
            return Err(postcard::Error::SerializeBufferFull);
        };
        // The same shapes as `VecSink`: fixed-size fields as one store, small ones byte by byte.
        if let (Ok(d), Ok(s)) = (
            <&mut [u8; 8]>::try_from(&mut *dst),
            <&[u8; 8]>::try_from(data),
        ) {
            *d = *s;
        } else if let (Ok(d), Ok(s)) = (
            <&mut [u8; 4]>::try_from(&mut *dst),
            <&[u8; 4]>::try_from(data),
        ) {
            *d = *s;
        } else if data.len() <= 16 {
            for (d, &b) in dst.iter_mut().zip(data) {
                *d = b;
            }
        } else {
            dst.copy_from_slice(data);
        }
        self.len = end;
        Ok(())
    }

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        match self.buf.get_mut(self.len) {
            Some(d) => {
                *d = data;
                self.len += 1;
                Ok(())
            }
            None => {
                self.full = true;
                Err(postcard::Error::SerializeBufferFull)
            }
        }
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A serializer appending to `out`.
pub(crate) fn serializer(out: &mut Vec<u8>) -> postcard::Serializer<VecSink<'_>> {
    postcard::Serializer {
        output: VecSink(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_writes_what_postcard_writes() {
        // Fields of every width the sink treats apart: 1..=10-byte varints, 4 and 8 fixed
        // bytes, and a long byte string.
        let value = (
            [0u64, 127, 128, 1 << 21, 1 << 28, u64::MAX],
            [1.5f64, -0.0, f64::MAX],
            [2.5f32, f32::MIN],
            [u32::MAX, 1 << 21],
            "x".repeat(40),
            vec![3u8; 17],
        );
        let mut ours = vec![0xaa];
        value.serialize(&mut serializer(&mut ours)).unwrap();
        let theirs = postcard::to_allocvec(&value).unwrap();
        assert_eq!(ours[1..], theirs);
        // Into a slice: the same bytes when they fit, and "full" (not an error of the value)
        // when they do not.
        let mut buf = vec![0u8; theirs.len()];
        let mut ser = postcard::Serializer {
            output: SliceSink::new(&mut buf),
        };
        value.serialize(&mut ser).unwrap();
        assert_eq!(ser.output.written(), theirs.len());
        assert_eq!(buf, theirs);
        for short in [0, 1, 9, theirs.len() - 1] {
            let mut buf = vec![0u8; short];
            let mut ser = postcard::Serializer {
                output: SliceSink::new(&mut buf),
            };
            assert!(value.serialize(&mut ser).is_err());
            assert!(ser.output.is_full(), "{short} bytes");
        }
    }
}
