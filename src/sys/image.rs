//! Naming functions across processes.
//!
//! A task function is a zero-sized type (an `fn` item or a closure that captures nothing). The
//! parent never sends the function itself: it sends the offset of a monomorphised *entry*
//! function (`entry::<T, ..>`) from an anchor symbol of this crate. Because the whole executable
//! image slides as one under ASLR, the offset names the same code in every process that runs the
//! same image. Before a worker turns an offset back into a function pointer it checks that:
//!
//! 1. it runs the same image as the pool (ELF build id and the anchor's offset in its object,
//!    compared in the handshake; see [`Identity`]);
//! 2. the address falls inside an executable segment of the object that holds the anchor.

use std::any::Any;
use std::ffi::c_int;
use std::mem::size_of;

use serde::{Deserialize, Serialize};

/// The anchor every offset is taken from.
#[inline(never)]
pub(crate) extern "C" fn anchor() {}

fn anchor_addr() -> usize {
    anchor as extern "C" fn() as usize
}

/// Who this process is, as far as function offsets are concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// `NT_GNU_BUILD_ID` of the object holding the anchor; empty if it has none.
    pub build_id: Vec<u8>,
    /// `(st_dev, st_ino)` of `/proc/self/exe`, the fallback when there is no build id.
    pub exe: (u64, u64),
    /// The anchor's offset from the object's load address.
    pub anchor_offset: u64,
}

struct Image {
    identity: Identity,
    /// Executable ranges `[start, end)` of the object holding the anchor.
    text: Vec<(usize, usize)>,
}

fn image() -> &'static Image {
    static IMAGE: std::sync::OnceLock<Image> = std::sync::OnceLock::new();
    IMAGE.get_or_init(read_image)
}

/// This process's identity.
pub(crate) fn identity() -> Identity {
    image().identity.clone()
}

/// Load address, build id and executable ranges of the object that holds the anchor.
type Found = (usize, Vec<u8>, Vec<(usize, usize)>);

struct Search {
    target: usize,
    found: Option<Found>,
}

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> c_int {
    // SAFETY: glibc passes a valid `dl_phdr_info` for the duration of the call, and `data` is the
    // `&mut Search` handed to `dl_iterate_phdr` below, not aliased elsewhere during the walk.
    let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
    let base = info.dlpi_addr as usize;
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers of a loaded object.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let mut text = Vec::new();
    let mut holds = false;
    for ph in phdrs {
        if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
            let start = base + ph.p_vaddr as usize;
            let end = start + ph.p_memsz as usize;
            holds |= (start..end).contains(&search.target);
            text.push((start, end));
        }
    }
    if !holds {
        return 0;
    }
    let mut build_id = Vec::new();
    for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_NOTE) {
        let start = base + ph.p_vaddr as usize;
        // SAFETY: a PT_NOTE segment of a loaded object is mapped readable for `p_memsz` bytes.
        let notes = unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
        if let Some(id) = find_build_id(notes) {
            build_id = id.to_vec();
            break;
        }
    }
    search.found = Some((base, build_id, text));
    1
}

fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (
            word(&notes[0..]) as usize,
            word(&notes[4..]) as usize,
            word(&notes[8..]),
        );
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" {
            return Some(&notes[name_end..name_end + descsz]);
        }
        notes = &notes[desc_end..];
    }
    None
}

fn read_image() -> Image {
    let mut search = Search {
        target: anchor_addr(),
        found: None,
    };
    // SAFETY: `visit` has the signature glibc expects and only touches `search` through `data`.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut search).cast()) };
    let exe = std::fs::metadata("/proc/self/exe")
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        })
        .unwrap_or_default();
    let (base, build_id, text) = search.found.unwrap_or((0, Vec::new(), Vec::new()));
    Image {
        identity: Identity {
            build_id,
            exe,
            anchor_offset: (anchor_addr() - base) as u64,
        },
        text,
    }
}

/// Checks that `offset` names an address inside this image's executable segments.
fn checked_address(offset: i64) -> Option<usize> {
    let addr = (anchor_addr() as i64).checked_add(offset)? as usize;
    image()
        .text
        .iter()
        .any(|&(s, e)| (s..e).contains(&addr))
        .then_some(addr)
}

/// The one signature of every function the pool names across processes: the worker's context,
/// the bytes the call works on, and the call's own arguments and output. Context and call are
/// passed as `dyn Any` and downcast by the function itself, so an offset that names the wrong
/// kind of entry point is an error that entry point reports, never a call through a pointer of
/// the wrong type. This module knows nothing of what the three arguments are.
pub(crate) type EntryFn = fn(&mut dyn Any, &[u8], &mut dyn Any);

/// The offset of an entry point from the anchor.
pub(crate) fn offset_of(entry: EntryFn) -> i64 {
    entry as usize as i64 - anchor_addr() as i64
}

/// Turns an offset received from the pool back into an entry point.
pub(crate) fn entry(offset: i64) -> Option<EntryFn> {
    let addr = checked_address(offset)?;
    // SAFETY: the handshake established that this process runs the same image as the pool (build
    // id and anchor offset), and the pool computed `offset` with `offset_of` from a function of
    // type `EntryFn` (the only type it takes). `checked_address` confirmed the address lies in an
    // executable segment of the image. A fn pointer has the size of a usize.
    Some(unsafe { std::mem::transmute::<usize, EntryFn>(addr) })
}

/// A zero-sized type with exactly one value: the wrapper around a user function type (an `fn`
/// item or a closure that captures nothing) that [`conjure`] may produce out of nothing.
///
/// Implement it only for such wrappers: inhabited, `Copy`, with no validity invariant beyond
/// their (empty) bytes. [`conjure`] checks the size at compile time.
pub(crate) trait ZeroSized: Copy + 'static {}

/// Produces the value of a zero-sized task type.
///
/// `T` is a wrapper around a user function type that the pool checked, at compile time, to be
/// zero-sized: an `fn` item or a non-capturing closure. Such a type has exactly one value and no
/// validity invariant beyond its (empty) bytes.
pub(crate) fn conjure<T: ZeroSized>() -> T {
    const { assert!(size_of::<T>() == 0) };
    // SAFETY: `T: ZeroSized` is implemented only by the crate's wrappers around user function
    // types, which are zero-sized (asserted above and in `task.rs`). Users cannot implement the
    // `Fn` traits for their own types on stable Rust, so the wrapped type is an `fn` item or a
    // closure without captures: inhabited, with a single value that has no bytes. Reading a
    // zero-sized value through a dangling, well-aligned, non-null pointer is valid.
    unsafe { std::ptr::NonNull::<T>::dangling().as_ptr().read() }
}
