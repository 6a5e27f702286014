//! CPU pinning: the CPUs each worker may run on (MPIRE's `cpu_ids`).

use std::ops::{Range, RangeInclusive};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::error::Error;

/// One entry of [`Builder::cpu_ids`](crate::Builder::cpu_ids): a CPU id, or a set of them.
///
/// Implemented for `usize` (one CPU) and for arrays, slices, vectors and ranges of `usize` (a
/// set).
pub trait Cpus {
    /// The CPU ids, in any order.
    #[doc(hidden)]
    fn cpus(self) -> Vec<usize>;
}

impl Cpus for usize {
    fn cpus(self) -> Vec<usize> {
        vec![self]
    }
}

impl<const N: usize> Cpus for [usize; N] {
    fn cpus(self) -> Vec<usize> {
        self.to_vec()
    }
}

impl Cpus for &[usize] {
    fn cpus(self) -> Vec<usize> {
        self.to_vec()
    }
}

impl Cpus for Vec<usize> {
    fn cpus(self) -> Vec<usize> {
        self
    }
}

impl Cpus for Range<usize> {
    fn cpus(self) -> Vec<usize> {
        self.collect()
    }
}

impl Cpus for RangeInclusive<usize> {
    fn cpus(self) -> Vec<usize> {
        self.collect()
    }
}

/// The CPUs of each of `workers` workers, from the entries given: one for all, or one each
/// (MPIRE's rule). Every CPU must be one this process may run on.
pub(crate) fn per_worker(
    entries: Vec<Vec<usize>>,
    workers: usize,
) -> Result<Vec<Vec<usize>>, Error> {
    let allowed = allowed()
        .map_err(|e| Error::config(format!("cpu_ids: could not read this process's CPUs: {e}")))?;
    per_worker_within(entries, workers, &allowed)
}

fn per_worker_within(
    entries: Vec<Vec<usize>>,
    workers: usize,
    allowed: &[usize],
) -> Result<Vec<Vec<usize>>, Error> {
    let per = match entries.len() {
        1 => vec![entries[0].clone(); workers],
        n if n == workers => entries,
        n => {
            return Err(Error::config(format!(
                "cpu_ids has {n} entries: give 1 (for every worker) or one per worker ({workers})"
            )));
        }
    };
    for (w, cpus) in per.iter().enumerate() {
        if cpus.is_empty() {
            return Err(Error::config(format!("cpu_ids: worker {w} has no CPU")));
        }
        if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
            return Err(Error::config(format!(
                "cpu_ids: CPU {bad} is not one this process may run on ({})",
                list(allowed)
            )));
        }
    }
    Ok(per)
}

/// The CPUs this process may run on.
fn allowed() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Pins thread `tid` (0: the calling thread) to `cpus`; threads it starts later inherit the set.
/// A process worker is pinned by its creator through its pid, before it runs any task (it has
/// one thread then).
pub(crate) fn pin(tid: i32, cpus: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(tid), &set)
}

/// `0-3,5`, the kernel's list format.
fn list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(match i == j {
            true => cpus[i].to_string(),
            false => format!("{}-{}", cpus[i], cpus[j]),
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries<C: Cpus>(e: impl IntoIterator<Item = C>) -> Vec<Vec<usize>> {
        e.into_iter().map(Cpus::cpus).collect()
    }

    /// MPIRE's conversion table (`test_params.py`, `test_pool.py::test_cpu_pinning`), on a
    /// machine with CPUs 0 to 3.
    #[test]
    fn mpire_table() {
        let all = [0, 1, 2, 3];
        type Case = (usize, Vec<Vec<usize>>, Vec<Vec<usize>>);
        let cases: Vec<Case> = vec![
            (4, entries([0]), vec![vec![0]; 4]),
            (4, entries([[0, 3]]), vec![vec![0, 3]; 4]),
            (1, entries([0]), vec![vec![0]]),
            (1, entries([[0, 3]]), vec![vec![0, 3]]),
            (2, entries([0]), vec![vec![0], vec![0]]),
            (2, entries([0, 1]), vec![vec![0], vec![1]]),
            (2, entries([[0, 3]]), vec![vec![0, 3], vec![0, 3]]),
            (2, entries([[0, 1], [0, 1]]), vec![vec![0, 1], vec![0, 1]]),
            (
                4,
                entries([0, 1, 2, 3]),
                vec![vec![0], vec![1], vec![2], vec![3]],
            ),
        ];
        for (workers, given, want) in cases {
            assert_eq!(per_worker_within(given, workers, &all).unwrap(), want);
        }
    }

    /// MPIRE's invalid inputs: a length other than 1 or `n_jobs`, a CPU that does not exist.
    #[test]
    fn mpire_invalid_inputs() {
        let all = [0, 1, 2, 3];
        for (workers, given) in [
            (2, entries([0, 1, 2])),
            (4, entries([0, 1])),
            (1, entries([4])),
            (2, entries([[0, 9]])),
            (2, vec![vec![]]),
        ] {
            let e = per_worker_within(given, workers, &all).unwrap_err();
            assert!(e.is_config(), "{e}");
        }
        let e = per_worker_within(entries([7]), 1, &all).unwrap_err();
        assert!(
            e.to_string()
                .contains("CPU 7 is not one this process may run on (0-3)"),
            "{e}"
        );
    }

    #[test]
    fn entries_of_every_shape() {
        assert_eq!(entries(std::iter::once(2..4)), vec![vec![2, 3]]);
        assert_eq!(entries(std::iter::once(0..=1)), vec![vec![0, 1]]);
        assert_eq!(entries([&[1usize, 2][..]]), vec![vec![1, 2]]);
        assert_eq!(list(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
    }
}
