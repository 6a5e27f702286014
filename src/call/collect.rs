//! Collecting a call's results: completed chunks turned into typed results, and the one reorder
//! buffer that puts them back in input order.

use std::collections::BTreeMap;

use crate::dispatch::{Completion, Outcome};
use crate::error::{Error, Kind, Stage};
use crate::proto::Failure;
use crate::task::{ChunkOut, Output};

/// Pieces of a call's output keyed by the index of their first task, handed out in input order:
/// each piece comes out once every task before it has.
pub(crate) struct Reorder<T> {
    waiting: BTreeMap<usize, (usize, T)>,
    next: usize,
}

impl<T> Reorder<T> {
    pub(crate) fn new() -> Self {
        Reorder {
            waiting: BTreeMap::new(),
            next: 0,
        }
    }

    /// Takes the piece covering tasks `first..first + len` and hands `emit` every piece that is
    /// now next in input order. A piece that comes in order (the common case) is handed on at
    /// once, without being filed.
    pub(crate) fn push(&mut self, first: usize, len: usize, piece: T, mut emit: impl FnMut(T)) {
        if first != self.next {
            self.waiting.insert(first, (len, piece));
            return;
        }
        self.next += len;
        emit(piece);
        while let Some(entry) = self.waiting.first_entry().filter(|e| *e.key() == self.next) {
            let (len, piece) = entry.remove();
            self.next += len;
            emit(piece);
        }
    }

    /// Whether pieces wait for an earlier one.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The pieces waiting.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.waiting.values().map(|(_, piece)| piece)
    }
}

/// The error of task `index` of a call, from the failure its worker reported.
fn task_error(failure: Failure, worker: Option<usize>, index: usize) -> Error {
    let e = Error::failed(failure, Stage::Task).with_task(index);
    match worker {
        Some(w) => e.with_worker(w),
        None => e,
    }
}

/// A finished chunk, typed.
pub(crate) struct Done<R> {
    /// Index of the chunk's first task in the call's input.
    pub first: usize,
    pub results: Results<R>,
}

pub(crate) enum Results<R> {
    /// Every task succeeded (the common case: no per-task wrapping).
    Ok(Vec<R>),
    /// Some failed.
    Mixed(Vec<Result<R, Error>>),
}

impl<R> Results<R> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Results::Ok(v) => v.len(),
            Results::Mixed(v) => v.len(),
        }
    }

    pub(crate) fn into_results(self) -> Vec<Result<R, Error>> {
        match self {
            Results::Ok(v) => v.into_iter().map(Ok).collect(),
            Results::Mixed(v) => v,
        }
    }
}

fn merge<R>(out: ChunkOut<R>, worker: Option<usize>, first: usize) -> Results<R> {
    if out.failures.is_empty() {
        return Results::Ok(out.values);
    }
    let total = out.values.len() + out.failures.len();
    let mut values = out.values.into_iter();
    let mut failures = out.failures.into_iter().peekable();
    let results = (0..total as u32)
        .map(|i| match failures.next_if(|(at, _)| *at == i) {
            Some((_, f)) => Err(task_error(f, worker, first + i as usize)),
            None => values
                .next()
                .ok_or_else(|| Error::new(Kind::Protocol("missing result".into()))),
        })
        .collect();
    Results::Mixed(results)
}

/// Turns a completed chunk into typed results, one per task.
pub(crate) fn decode<R: Output>(c: Completion) -> Done<R> {
    let (worker, first, len) = (c.worker, c.first, c.len);
    let all_failed = |e: Error| {
        Results::Mixed(
            (0..len)
                .map(|i| Err(e.clone().with_task(first + i)))
                .collect(),
        )
    };
    let results = match c.outcome {
        Outcome::Failed(e) => all_failed(e),
        Outcome::Local(boxed) => match boxed.downcast::<ChunkOut<R>>() {
            Ok(out) => merge(*out, worker, first),
            Err(_) => all_failed(Error::new(Kind::Protocol(
                "a worker thread returned results of another type".into(),
            ))),
        },
    };
    Done { first, results }
}

#[cfg(test)]
mod tests {
    use super::Reorder;

    #[test]
    fn pieces_come_out_in_input_order_whatever_order_they_arrive_in() {
        let mut r = Reorder::new();
        let mut out = Vec::new();
        // Pieces of tasks 0..2, 2..5, 5..6, 6..10 arriving as 2..5, 6..10, 0..2, 5..6.
        r.push(2, 3, "b", |p| out.push(p));
        r.push(6, 4, "d", |p| out.push(p));
        assert!(out.is_empty() && !r.is_empty());
        r.push(0, 2, "a", |p| out.push(p));
        assert_eq!(out, ["a", "b"]);
        r.push(5, 1, "c", |p| out.push(p));
        assert_eq!(out, ["a", "b", "c", "d"]);
        assert!(r.is_empty());
    }
}
