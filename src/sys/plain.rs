//! Plain numbers seen as bytes, and slices of them read in place from a worker's view of the
//! pool's arena (the zero-copy half of [`SharedSlice`](crate::SharedSlice)).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::shm::View;

mod sealed {
    pub trait Sealed {}
}

/// The element types of a [`SharedSlice`](crate::SharedSlice): fixed-size numbers, which have no
/// padding and for which every bit pattern is a value, so that a slice of them can be read in
/// place from shared memory.
///
/// Sealed: implemented for `u8`, `u16`, `u32`, `u64`, `i8`, `i16`, `i32`, `i64`, `f32` and `f64`.
pub trait Plain: sealed::Sealed + Copy + Send + Sync + fmt::Debug + PartialEq + 'static {
    /// The size of one value in bytes.
    #[doc(hidden)]
    const SIZE: usize = std::mem::size_of::<Self>();

    /// Appends the value's little-endian bytes to `out`.
    #[doc(hidden)]
    fn put_le(self, out: &mut Vec<u8>);

    /// The value whose little-endian bytes are `bytes` (exactly `SIZE` of them).
    #[doc(hidden)]
    fn get_le(bytes: &[u8]) -> Self;
}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Plain for $t {
            #[inline(always)]
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn get_le(bytes: &[u8]) -> Self {
                let mut a = [0; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}

plain!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

/// The bytes of `values`, in this machine's byte order.
pub(crate) fn bytes_of<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: `T` is one of the sealed `Plain` types: no padding, so every byte of the slice is
    // initialised; `u8` has alignment 1; the length is the slice's size in bytes, and the result
    // borrows `values`.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

/// A slice of `T` read in place from a worker's read-only view of the pool's arena. It keeps the
/// view mapped for as long as it lives.
pub(crate) struct Mapped<T: Plain> {
    _view: Arc<View>,
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the values are plain numbers in a read-only mapping that `_view` keeps alive; nothing
// in this process writes them, so sharing or sending the reference is sharing a `&[T]`.
unsafe impl<T: Plain> Send for Mapped<T> {}
// SAFETY: as above.
unsafe impl<T: Plain> Sync for Mapped<T> {}

impl<T: Plain> Mapped<T> {
    /// The `bytes` bytes at `offset` in `view` as a slice of `T`, or `None` when the range is
    /// outside the view, not aligned for `T`, or not a whole number of values.
    pub(crate) fn new(view: &Arc<View>, offset: u64, bytes: u64) -> Option<Mapped<T>> {
        let range = view.get(offset, bytes)?;
        if range.len() % T::SIZE != 0 || !range.as_ptr().cast::<T>().is_aligned() {
            return None;
        }
        Some(Mapped {
            _view: view.clone(),
            ptr: NonNull::from(range).cast::<T>(),
            len: range.len() / T::SIZE,
        })
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` is aligned for `T` and `len` values long, inside the mapping (both
        // checked in `new`), which `_view` keeps mapped while `self` lives. Every bit pattern is
        // a `T`. The pool wrote these bytes before the worker was told where they are, and never
        // writes them again while the pool lives: the block stays allocated for the pool's life.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> Clone for Mapped<T> {
    fn clone(&self) -> Self {
        Mapped {
            _view: self._view.clone(),
            ptr: self.ptr,
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_the_values_in_native_order() {
        let v = [1.5f64, -2.0];
        let b = bytes_of(&v);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..8], &1.5f64.to_ne_bytes());
        let mut le = Vec::new();
        (-2.0f64).put_le(&mut le);
        assert_eq!(f64::get_le(&le), -2.0);
    }
}
