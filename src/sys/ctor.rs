//! The life-before-main hook.
//!
//! A `Spawn` worker and a re-executed forkserver are fresh copies of the running binary. They must
//! take their role before `main` runs: in a plain binary `main` would otherwise start again, and in
//! a `cargo test` binary the libtest harness would run the tests again. glibc runs the functions
//! listed in `.init_array` before `main`, with `argc`, `argv` and `envp`, in a single thread.
//!
//! The hook only reads one environment variable; in every process that is not a child of ours it
//! returns at once. [`keep`] is referenced from `ampire::init()` and from the pool builder so that
//! the linker keeps the object file that holds the hook.

use std::ffi::{c_char, c_int};

extern "C" fn ampire_ctor(_argc: c_int, _argv: *const *const c_char, _envp: *const *const c_char) {
    crate::entry::divert_if_child();
}

#[used]
// SAFETY: `.init_array` holds pointers to functions of exactly this signature; glibc calls them
// once, in order, on the main thread before `main`. The function neither unwinds (role diversion
// catches every panic and leaves through `_exit`) nor depends on any other constructor.
#[unsafe(link_section = ".init_array")]
static AMPIRE_CTOR: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = ampire_ctor;

/// Makes sure the hook is linked into the final binary.
pub(crate) fn keep() {
    // A volatile read of the static is a use the optimiser cannot drop, so the object holding it
    // is part of every binary that calls `init()` or builds a pool.
    let f = &raw const AMPIRE_CTOR;
    // SAFETY: the pointer comes from a live static of that type.
    let _ = unsafe { std::ptr::read_volatile(f) };
}
