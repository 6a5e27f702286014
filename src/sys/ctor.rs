//! The life-before-main hook.
//!
//! A `Spawn` worker and a re-executed forkserver are fresh copies of the running binary. They must
//! take their role before `main` runs: in a plain binary `main` would otherwise start again, and in
//! a `cargo test` binary the libtest harness would run the tests again. glibc runs the functions
//! listed in `.init_array` before `main`, with `argc`, `argv` and `envp`, in a single thread.
//!
//! [`before_main!`] registers a hook without this module knowing what it does: the role switch
//! (`entry.rs`) invokes it, so the low room names nothing above it. The hook must only read the
//! environment and return at once in every process that is not a child of ours. The macro also
//! defines `keep()`, which `ampire::init()` and the pool builder call so that the linker keeps the
//! object file that holds the hook.

/// Runs `$hook` (a `fn()` that neither unwinds nor depends on another constructor) before `main`,
/// and defines `keep()` beside it.
macro_rules! before_main {
    ($hook:path) => {
        #[used]
        #[allow(unsafe_code)]
        // SAFETY: `.init_array` holds pointers to functions of exactly this signature; glibc
        // calls them once, in order, on the main thread before `main`. The hook neither unwinds
        // nor depends on any other constructor (the caller's promise).
        #[unsafe(link_section = ".init_array")]
        static AMPIRE_CTOR: extern "C" fn(
            std::ffi::c_int,
            *const *const std::ffi::c_char,
            *const *const std::ffi::c_char,
        ) = {
            extern "C" fn ctor(
                _argc: std::ffi::c_int,
                _argv: *const *const std::ffi::c_char,
                _envp: *const *const std::ffi::c_char,
            ) {
                $hook()
            }
            ctor
        };

        /// Makes sure the hook is linked into the final binary.
        pub(crate) fn keep() {
            // A volatile read of the static is a use the optimiser cannot drop, so the object
            // holding it is part of every binary that calls `init()` or builds a pool.
            let f = &raw const AMPIRE_CTOR;
            #[allow(unsafe_code)]
            // SAFETY: the pointer comes from a live static of that type.
            let _ = unsafe { std::ptr::read_volatile(f) };
        }
    };
}

pub(crate) use before_main;
