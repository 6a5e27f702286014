//! Shared memory for large bodies: a `memfd` the pool maps read-write and its process workers map
//! read-only.
//!
//! A chunk of inputs (or the shared object) bigger than a pipe's worth is serialised straight
//! into an [`Arena`] block, and the task frame names the block instead of carrying the bytes: the
//! data is copied once on each side (serialise, deserialise) instead of four times (serialise,
//! into the pipe, out of the pipe, deserialise), and the worker is never woken per 64 KiB.
//!
//! Blocks are handed out first-fit from the lowest address, so the pages ever touched (which the
//! kernel then keeps, as for any `memfd`) stay close to the peak volume in flight, not to the
//! arena's size. A block is freed when its job is dropped: after the worker reported the job's
//! result, or after the worker died. The blocks of the shared object's `SharedSlice`s, which
//! workers read in place for their whole life, are freed with the pool.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Blocks start on cache-line boundaries, so two blocks never share a line.
const ALIGN: usize = 64;

/// An arena that ever held this many bytes is given back to the kernel on a thread of its own.
/// Freeing the pages of a `memfd` costs about 1 ms per 4 MiB, and the pool is usually being shut
/// down when its arena goes: the caller need not wait for that.
const RELEASE_ASIDE: usize = 4 << 20;

/// A shared-memory region and its allocator, on the pool's side.
pub(crate) struct Arena {
    fd: OwnedFd,
    base: NonNull<u8>,
    cap: usize,
    /// Free extents: offset → length, coalesced.
    free: Mutex<BTreeMap<usize, usize>>,
    /// The end of the highest block ever handed out: the pages that may have been touched.
    high: AtomicUsize,
}

// SAFETY: `base` points to a `MAP_SHARED` mapping that lives as long as the arena. Its bytes are
// reached only through `Block`s, whose ranges are disjoint (the allocator below hands each range
// to one block at a time) and whose mutable access needs `&mut Block`.
unsafe impl Send for Arena {}
// SAFETY: as above; the allocator state is behind a mutex.
unsafe impl Sync for Arena {}

impl Arena {
    /// Creates an arena of `cap` bytes. The memory is reserved, not touched: pages are allocated
    /// when a block first uses them.
    pub(crate) fn new(cap: usize) -> io::Result<Arena> {
        let cap = cap
            .checked_next_multiple_of(ALIGN)
            .filter(|&c| libc::off_t::try_from(c).is_ok())
            .ok_or_else(|| io::Error::other(format!("{cap} bytes is more than a file can hold")))?;
        let fd = memfd(c"ampire-arena", cap)?;
        let base = map(fd.as_fd(), cap, libc::PROT_READ | libc::PROT_WRITE)?;
        Ok(Arena {
            fd,
            base,
            cap,
            free: Mutex::new(if cap > 0 {
                BTreeMap::from([(0, cap)])
            } else {
                BTreeMap::new()
            }),
            high: AtomicUsize::new(0),
        })
    }

    /// The `memfd`, to hand to a worker.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A block of exactly `len` bytes (its contents are unspecified), or `None` when no free
    /// extent is large enough.
    pub(crate) fn alloc(self: &Arc<Self>, len: usize) -> Option<Block> {
        let size = len.max(1).div_ceil(ALIGN) * ALIGN;
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (&off, &have) = free.iter().find(|&(_, &have)| have >= size)?;
        free.remove(&off);
        if have > size {
            free.insert(off + size, have - size);
        }
        self.high.fetch_max(off + size, Ordering::Relaxed);
        Some(Block {
            arena: self.clone(),
            off,
            size,
            len,
        })
    }

    fn release(&self, off: usize, size: usize) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut off, mut size) = (off, size);
        if let Some((&prev, &plen)) = free.range(..off).next_back() {
            if prev + plen == off {
                free.remove(&prev);
                off = prev;
                size += plen;
            }
        }
        if let Some(&next_len) = free.get(&(off + size)) {
            free.remove(&(off + size));
            size += next_len;
        }
        free.insert(off, size);
    }

    /// Bytes held by blocks (rounded up to their alignment).
    pub(crate) fn in_use(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        self.cap - free.values().sum::<usize>()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let mapping = Mapping(self.base, self.cap);
        if *self.high.get_mut() >= RELEASE_ASIDE {
            // Once the file is closed (below), the mapping holds the last reference to its pages:
            // they are freed where it is unmapped. If no thread can be started, the closure and
            // the mapping in it are dropped here.
            let _ = std::thread::Builder::new()
                .name("ampire-release".into())
                .spawn(move || drop(mapping));
        }
    }
}

/// A mapping made by [`map`], unmapped on drop.
struct Mapping(NonNull<u8>, usize);

// SAFETY: the arena that made the mapping is being dropped, so nothing else reaches its bytes;
// the receiving thread only unmaps it.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        unmap(self.0, self.1);
    }
}

/// A range of an [`Arena`], returned to it on drop.
pub(crate) struct Block {
    arena: Arc<Arena>,
    off: usize,
    size: usize,
    len: usize,
}

impl Block {
    /// The block's bytes, to fill.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `off + len <= cap` (the allocator only hands out ranges inside the mapping), no
        // other block overlaps this range while `self` lives, and `&mut self` makes this the only
        // reference into it in this process. Workers only read it.
        unsafe { std::slice::from_raw_parts_mut(self.arena.base.as_ptr().add(self.off), self.len) }
    }

    /// The block's bytes, to read (the pool reads a block of inputs again to report a task's
    /// input, or to send part of it once more).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: as for `bytes_mut`, the range is inside the mapping and owned by this block;
        // shared access through `&self` excludes the mutable one. Workers only read it.
        unsafe { std::slice::from_raw_parts(self.arena.base.as_ptr().add(self.off), self.len) }
    }

    /// Fills the block with `bytes` (exactly its length) through the file rather than the
    /// mapping: the kernel allocates the pages in bulk, without a page fault for each.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        assert_eq!(bytes.len(), self.len, "a block is filled whole");
        let mut done = 0;
        while done < bytes.len() {
            let n = nix::sys::uio::pwrite(
                &self.arena.fd,
                &bytes[done..],
                (self.off + done) as libc::off_t,
            )?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            done += n;
        }
        Ok(())
    }

    pub(crate) fn offset(&self) -> u64 {
        self.off as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.arena.release(self.off, self.size);
    }
}

/// A worker's read-only view of the pool's arena.
pub(crate) struct View {
    base: Option<NonNull<u8>>,
    len: usize,
}

// SAFETY: the mapping is read-only and lives as long as the view; reading it from any thread
// is reading shared bytes, which the pool does not write while a worker may read them.
unsafe impl Send for View {}
// SAFETY: as above.
unsafe impl Sync for View {}

impl View {
    /// Maps the whole `memfd` read-only.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<View> {
        let len = nix::sys::stat::fstat(&fd)?.st_size as usize;
        let base = if len > 0 {
            Some(map(fd.as_fd(), len, libc::PROT_READ)?)
        } else {
            None
        };
        Ok(View { base, len })
    }

    /// `len` bytes at `off`, or `None` when the range is outside the arena.
    pub(crate) fn get(&self, off: u64, len: u64) -> Option<&[u8]> {
        let off = usize::try_from(off).ok()?;
        let len = usize::try_from(len).ok()?;
        if off.checked_add(len)? > self.len {
            return None;
        }
        let Some(base) = self.base else {
            return (len == 0).then_some(&[][..]);
        };
        // SAFETY: the range is inside the mapping (checked above), which lives as long as `self`.
        // The pool writes a block only while no task names it: a block stays allocated until
        // this worker has reported the result of the task that names it, or has died (a block
        // of the shared object, until the pool is gone).
        Some(unsafe { std::slice::from_raw_parts(base.as_ptr().add(off), len) })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(base) = self.base {
            unmap(base, self.len);
        }
    }
}

/// A new `memfd` of `len` bytes (close-on-exec), reserved and zero, no page of it allocated yet.
pub(super) fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated string; a non-negative result is a new descriptor that
    // nothing else owns.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by the kernel and is owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    nix::unistd::ftruncate(&fd, len as libc::off_t)?;
    Ok(fd)
}

pub(super) fn map(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int) -> io::Result<NonNull<u8>> {
    if len == 0 {
        return Ok(NonNull::dangling());
    }
    // SAFETY: a fresh shared mapping of `len` bytes of `fd` at an address the kernel picks; it
    // aliases no Rust object.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

pub(super) fn unmap(base: NonNull<u8>, len: usize) {
    if len > 0 {
        // SAFETY: `base..base+len` is a mapping made by `map` and owned by the caller, which is
        // being dropped: no reference into it outlives this call.
        unsafe { libc::munmap(base.as_ptr().cast(), len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_disjoint_and_return_on_drop() {
        let arena = Arc::new(Arena::new(4096).unwrap());
        let mut a = arena.alloc(1000).unwrap();
        let mut b = arena.alloc(1000).unwrap();
        a.bytes_mut().fill(1);
        b.bytes_mut().fill(2);
        assert!(a.bytes_mut().iter().all(|&x| x == 1));
        assert!(arena.alloc(4096).is_none());
        let c = arena.alloc(2000).unwrap();
        assert!(arena.alloc(200).is_none());
        drop(b);
        let d = arena.alloc(1000).unwrap();
        assert_eq!(d.offset(), 1024, "the freed middle block is reused first");
        drop((a, c, d));
        assert_eq!(arena.in_use(), 0);
        assert!(arena.alloc(4096).is_some(), "freed extents coalesce");
    }

    #[test]
    fn a_view_reads_what_a_block_wrote_and_rejects_ranges_outside() {
        let arena = Arc::new(Arena::new(1 << 16).unwrap());
        let mut b = arena.alloc(5).unwrap();
        b.bytes_mut().copy_from_slice(b"hello");
        let fd = arena.fd().try_clone_to_owned().unwrap();
        let view = View::open(fd).unwrap();
        assert_eq!(view.get(b.offset(), 5), Some(&b"hello"[..]));
        assert!(view.get(1 << 16, 1).is_none());
        assert!(view.get(u64::MAX, 2).is_none());
    }
}
