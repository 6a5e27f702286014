//! Every `unsafe` block of the crate lives below this module.
//!
//! The rest of the crate is compiled with `#![deny(unsafe_code)]`. Each block here carries a
//! `// SAFETY:` comment that states the invariant it relies on. The pieces are:
//!
//! - [`ctor`]: the life-before-main hook that turns a re-executed child into a worker or a
//!   forkserver before `main` (or the libtest harness) runs;
//! - [`fork`]: `fork(2)` from a known thread, with the standard streams' locks held across it;
//! - [`image`]: naming a function across processes (offsets from an anchor symbol, checked
//!   against the executable mapping and the ELF build id) and conjuring zero-sized task values;
//! - [`local`]: globals that belong to one process, never to a child forked from it;
//! - [`fd`]: raw descriptors: pidfds, `SCM_RIGHTS`, tokio registration, inherited descriptors;
//! - [`plain`]: plain numbers seen as bytes, and slices of them read in place from the arena;
//! - [`shm`]: the shared-memory arena that carries large bodies to process workers;
//! - [`journal`]: each process worker's journal of results and progress, which survives it;
//! - [`reap`]: reaping a child with `wait4`, which says what it used;
//! - [`spawn`]: re-executing this binary with `posix_spawn`, without copying the owner's page
//!   tables.

pub(crate) mod ctor;
pub(crate) mod fd;
pub(crate) mod fork;
pub(crate) mod image;
pub(crate) mod journal;
pub(crate) mod local;
pub(crate) mod plain;
#[cfg(test)]
pub(crate) mod probe;
pub(crate) mod reap;
pub(crate) mod shm;
pub(crate) mod spawn;
