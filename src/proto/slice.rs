//! [`SharedSlice`]: a slice of numbers in the shared object that a pool's process workers on this
//! machine read in place from shared memory, instead of each decoding a copy.
//!
//! On the wire it is one of two variants: `Inline`, the values' little-endian bytes, which any
//! serde format can carry anywhere; or `Arena`, the span of the pool's arena where the values lie
//! in this machine's byte order. The pool writes `Arena` only while it encodes the shared object
//! for its local workers ([`placing`]), and a worker reads it only while it decodes that object
//! ([`reading`]); everywhere else a `SharedSlice` is plain bytes.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, EnumAccess, SeqAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::body::{ARENA_MIN, Span};
use crate::sys::plain::{self, Mapped, Plain};
use crate::sys::shm::{Arena, Block, View};

/// A slice of plain numbers for a pool's [shared object](crate::Builder::shared), which the
/// pool's `Spawn` and `Forkserver` workers read in place from shared memory instead of each
/// decoding a copy of their own.
///
/// A large `Vec<f64>` in the shared object is serialised by the pool, then decoded by every
/// `Spawn` and `Forkserver` worker (and by every replacement): time before the first task, and
/// one copy per worker. Make it a `SharedSlice<f64>` and the pool copies its values once into
/// its shared-memory arena, and every worker reads that one copy, read-only: no decoding, and the
/// memory is shared as after a fork.
///
/// ```rust,no_run
/// use ampire::{AsyncPool, SharedSlice, StartMethod, Worker};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Image {
///     width: usize,
///     pixels: SharedSlice<f64>,
/// }
///
/// fn row_sum(w: &mut Worker<'_, Image>, row: usize) -> f64 {
///     let image = w.shared();
///     image.pixels[row * image.width..][..image.width].iter().sum()
/// }
///
/// # async fn run() -> Result<(), ampire::Error> {
/// let pixels: Vec<f64> = (0..4_000_000).map(|i| (i % 256) as f64).collect();
/// let pool = AsyncPool::builder()
///     .start_method(StartMethod::Spawn)
///     .shared(Image { width: 2000, pixels: pixels.into() })
///     .build()
///     .await?;
/// let sums = pool.map_with(row_sum, 0..2000).await?;
/// # Ok(()) }
/// ```
///
/// Where the values come from, by case ([`is_shared_memory`](SharedSlice::is_shared_memory)
/// tells):
/// - in a `Spawn` or `Forkserver` worker of a pool on this machine: the pool's arena, when the
///   slice takes at least 64 KiB and the arena has room for it
///   ([`arena_size`](crate::Builder::arena_size)); the pool keeps it there for its whole life;
/// - under `Fork`, the pool's own memory, inherited copy-on-write; under `Threading`, the very
///   object given to [`shared`](crate::Builder::shared);
/// - otherwise (a small slice, a full arena, workers on other hosts, a `SharedSlice` in an input
///   or a result, or any other serde use): its little-endian bytes, decoded into a copy.
pub struct SharedSlice<T: Plain>(Repr<T>);

enum Repr<T: Plain> {
    Owned(Vec<T>),
    Mapped(Mapped<T>),
}

impl<T: Plain> SharedSlice<T> {
    /// Whether this slice's values are read in place from a pool's shared memory (rather than
    /// held in memory of this process's own).
    pub fn is_shared_memory(&self) -> bool {
        matches!(self.0, Repr::Mapped(_))
    }
}

impl<T: Plain> Deref for SharedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Mapped(m) => m.as_slice(),
        }
    }
}

impl<T: Plain> AsRef<[T]> for SharedSlice<T> {
    fn as_ref(&self) -> &[T] {
        self
    }
}

impl<T: Plain> From<Vec<T>> for SharedSlice<T> {
    fn from(values: Vec<T>) -> Self {
        SharedSlice(Repr::Owned(values))
    }
}

impl<T: Plain> From<&[T]> for SharedSlice<T> {
    fn from(values: &[T]) -> Self {
        SharedSlice(Repr::Owned(values.to_vec()))
    }
}

impl<T: Plain> FromIterator<T> for SharedSlice<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        SharedSlice(Repr::Owned(iter.into_iter().collect()))
    }
}

impl<T: Plain> Default for SharedSlice<T> {
    fn default() -> Self {
        SharedSlice(Repr::Owned(Vec::new()))
    }
}

impl<T: Plain> Clone for SharedSlice<T> {
    /// A copy of the values, or another reference to the same shared memory.
    fn clone(&self) -> Self {
        SharedSlice(match &self.0 {
            Repr::Owned(v) => Repr::Owned(v.clone()),
            Repr::Mapped(m) => Repr::Mapped(m.clone()),
        })
    }
}

impl<T: Plain> PartialEq for SharedSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Plain> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

const NAME: &str = "SharedSlice";

impl<T: Plain> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match place(self) {
            Some(span) => s.serialize_newtype_variant(NAME, 1, "Arena", &span),
            None => s.serialize_newtype_variant(NAME, 0, "Inline", &LeBytes(self)),
        }
    }
}

/// Values serialised as their little-endian bytes.
struct LeBytes<'a, T>(&'a [T]);

impl<T: Plain> Serialize for LeBytes<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Cow<'_, [u8]> = if cfg!(target_endian = "little") {
            Cow::Borrowed(plain::bytes_of(self.0))
        } else {
            let mut out = Vec::with_capacity(self.0.len() * T::SIZE);
            self.0.iter().for_each(|v| v.put_le(&mut out));
            Cow::Owned(out)
        };
        s.serialize_bytes(&bytes)
    }
}

impl<'de, T: Plain> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_enum(NAME, &["Inline", "Arena"], SliceVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(variant_identifier)]
enum Variant {
    Inline,
    Arena,
}

struct SliceVisitor<T>(PhantomData<T>);

impl<'de, T: Plain> Visitor<'de> for SliceVisitor<T> {
    type Value = SharedSlice<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a shared slice")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        match data.variant()? {
            (Variant::Inline, v) => v
                .newtype_variant_seed(LeValues(PhantomData))
                .map(|values| SharedSlice(Repr::Owned(values))),
            (Variant::Arena, v) => {
                let span: Span = v.newtype_variant()?;
                map(span).map_err(de::Error::custom)
            }
        }
    }
}

/// Decodes little-endian bytes into values.
struct LeValues<T>(PhantomData<T>);

impl<'de, T: Plain> DeserializeSeed<'de> for LeValues<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de, T: Plain> Visitor<'de> for LeValues<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes, {} per value", T::SIZE)
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<T>, E> {
        if bytes.len() % T::SIZE != 0 {
            return Err(E::invalid_length(bytes.len(), &self));
        }
        Ok(bytes.chunks_exact(T::SIZE).map(T::get_le).collect())
    }

    // Formats without a bytes type (JSON) give the bytes as a sequence.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        self.visit_bytes(&bytes)
    }
}

/// The pool's arena while it encodes its shared object, and the blocks placed in it so far,
/// each with the address and length of the values it copies.
struct Placement {
    arena: Arc<Arena>,
    placed: Vec<(usize, usize, Block)>,
}

thread_local! {
    static PLACING: RefCell<Option<Placement>> = const { RefCell::new(None) };
    static READING: RefCell<Option<Arc<View>>> = const { RefCell::new(None) };
}

/// Runs `encode` (the pool encoding its shared object) with large shared slices copied into
/// `arena`, and returns the blocks that hold them: the pool keeps them for its whole life, since
/// every worker, replacements included, reads them in place.
pub(crate) fn placing<R>(
    arena: Option<&Arc<Arena>>,
    encode: impl FnOnce() -> R,
) -> (R, Vec<Block>) {
    let Some(arena) = arena else {
        return (encode(), Vec::new());
    };
    let outer = Restore(&PLACING, PLACING.replace(None));
    PLACING.set(Some(Placement {
        arena: arena.clone(),
        placed: Vec::new(),
    }));
    let r = encode();
    let placed = PLACING.take().map(|p| p.placed).unwrap_or_default();
    drop(outer);
    (r, placed.into_iter().map(|(_, _, block)| block).collect())
}

/// Runs `decode` (a worker decoding the shared object) with `view` as the arena that shared
/// slices are read from.
pub(crate) fn reading<R>(view: Option<&Arc<View>>, decode: impl FnOnce() -> R) -> R {
    let _outer = Restore(&READING, READING.replace(view.cloned()));
    decode()
}

/// Puts a thread-local back as it was, even if the code between panics.
struct Restore<T: 'static>(
    &'static std::thread::LocalKey<RefCell<Option<T>>>,
    Option<T>,
);

impl<T: 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        self.0.set(self.1.take());
    }
}

/// The span of the arena holding `values`, copying them there first, when a pool is encoding its
/// shared object and they are large enough to be worth it. Serialisers may run twice over the same
/// object (to measure it, then to write it): the same values are placed once.
fn place<T: Plain>(values: &[T]) -> Option<Span> {
    let bytes = plain::bytes_of(values);
    if bytes.len() < ARENA_MIN {
        return None;
    }
    PLACING.with_borrow_mut(|p| {
        let p = p.as_mut()?;
        let key = (bytes.as_ptr() as usize, bytes.len());
        let block = match p.placed.iter().position(|(a, l, _)| (*a, *l) == key) {
            Some(i) => &p.placed[i].2,
            None => {
                let mut block = p.arena.alloc(bytes.len())?;
                block.write_all(bytes).ok()?;
                p.placed.push((key.0, key.1, block));
                &p.placed[p.placed.len() - 1].2
            }
        };
        Some(Span {
            offset: block.offset(),
            len: block.len() as u64,
        })
    })
}

/// The values at `span` of the arena this worker is reading its shared object from.
fn map<T: Plain>(span: Span) -> Result<SharedSlice<T>, &'static str> {
    READING.with_borrow(|view| {
        let view = view.as_ref().ok_or(
            "a shared slice in a pool's shared memory can only be read by its own workers",
        )?;
        Mapped::new(view, span.offset, span.len)
            .map(|m| SharedSlice(Repr::Mapped(m)))
            .ok_or("a shared slice outside the pool's shared memory")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_travel_as_bytes_outside_a_pool() {
        let s: SharedSlice<f64> = (0..20_000).map(|i| i as f64 / 3.0).collect();
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert!(bytes.len() > 20_000 * 8, "inline, not a span");
        let back: SharedSlice<f64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        assert!(!back.is_shared_memory());
        let small: SharedSlice<i16> = vec![-1, 2, 3].into();
        let back: SharedSlice<i16> =
            postcard::from_bytes(&postcard::to_allocvec(&small).unwrap()).unwrap();
        assert_eq!(&back[..], &[-1, 2, 3]);
    }

    #[test]
    fn malformed_slices_are_errors() {
        // Inline bytes that are not a whole number of values.
        let odd = postcard::to_allocvec(&(0u8, &[1u8, 2, 3][..])).unwrap();
        assert!(postcard::from_bytes::<SharedSlice<u16>>(&odd).is_err());
        // A span read outside a worker, and a variant that does not exist.
        let span = postcard::to_allocvec(&(1u8, Span { offset: 0, len: 8 })).unwrap();
        assert!(postcard::from_bytes::<SharedSlice<u64>>(&span).is_err());
        assert!(postcard::from_bytes::<SharedSlice<u64>>(&[7, 0]).is_err());
    }

    #[test]
    fn large_slices_are_placed_once_in_the_arena_while_placing() {
        let arena = Arc::new(Arena::new(1 << 20).unwrap());
        let s: SharedSlice<u32> = (0..40_000).collect();
        let ((a, b), blocks) = placing(Some(&arena), || {
            (
                postcard::to_allocvec(&s).unwrap(),
                postcard::to_allocvec(&s).unwrap(),
            )
        });
        assert_eq!(a, b);
        assert!(a.len() < 16, "a span, not the values: {} bytes", a.len());
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].bytes(), plain::bytes_of(&s));
        // Once placing ends, the same slice travels inline again.
        assert!(postcard::to_allocvec(&s).unwrap().len() > 40_000 * 4);
    }
}
