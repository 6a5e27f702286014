#!/usr/bin/env python3
"""A/B: the `compare` example of two versions of ampire, interleaved in one run.

Run from the repository root:

    python3 scripts/compare/ab.py --base 2f5b91b                     # W1 W2 W7-numerical, all methods
    python3 scripts/compare/ab.py --base HEAD~3 --only W2 --methods fork,spawn --reps 11
    python3 scripts/compare/ab.py --b-env AMPIRE_BENCH_TASK_TIMEOUT_MS=60000   # same code, B with a setting

A is the working tree; B is `--base` (a git revision, built in a worktree under
`target/ab/`), or the working tree again when no base is given (then `--b-env`
says what differs). Each repetition runs every cell once as A and once as B, one
fresh process each, the order alternating, so that a machine whose speed drifts
moves both sides alike. It prints, per cell, the median of each side, the median
of the pairwise ratios A/B (above 1: A is higher) and their range.

Only ampire cells; see README.md next to this file for the workloads.
"""

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from run import build_rust, parse_lines, run_cell  # noqa: E402

METHODS = ["fork", "forkserver", "spawn", "threading"]

# The settings `examples/compare.rs` reads for W1 and W2, and what each takes.
BENCH_SETTINGS = {
    "AMPIRE_BENCH_TASK_TIMEOUT_MS": int,
    "AMPIRE_BENCH_LIFESPAN": int,
    "AMPIRE_BENCH_INSIGHTS": int,
    "AMPIRE_BENCH_PROGRESS": int,
    "AMPIRE_BENCH_SSH": str,
}


def build(tree):
    """Builds the compare example in `tree`; returns the binary's path."""
    exe = build_rust(tree)
    if not exe:
        sys.exit(f"error: could not build the compare example in {tree}")
    return exe


def worktree(rev):
    """A worktree of `rev` under target/ab/, made once and kept (its target/ too)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = ROOT / "target" / "ab" / sha
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return sha, tree


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="git revision for B (default: the working tree again)")
    ap.add_argument("--only", default="W1,W2,W7-numerical", help="workloads, comma-separated")
    ap.add_argument("--methods", default=",".join(METHODS), help="start methods, comma-separated")
    ap.add_argument("--reps", type=int, default=7, help="pairs per cell (default 7)")
    ap.add_argument("--a-env", action="append", default=[], metavar="K=V", help="environment of A")
    ap.add_argument("--b-env", action="append", default=[], metavar="K=V", help="environment of B")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    a_exe = build(ROOT)
    if args.base:
        sha, tree = worktree(args.base)
        b_exe, b_name = build(tree), sha
    else:
        b_exe, b_name = a_exe, "working tree"
    env = {"A": dict(os.environ), "B": dict(os.environ)}
    for side, pairs in (("A", args.a_env), ("B", args.b_env)):
        for kv in pairs:
            k, _, v = kv.partition("=")
            # A setting `compare` does not read (or cannot parse) would measure one
            # configuration twice and call it the cost of the setting.
            if k.startswith("AMPIRE_BENCH_") and k not in BENCH_SETTINGS:
                sys.exit(f"error: compare reads no {k}; it reads {', '.join(sorted(BENCH_SETTINGS))}")
            if BENCH_SETTINGS.get(k) is int and not v.isdigit():
                sys.exit(f"error: {k} takes a whole number, not {v!r}")
            env[side][k] = v
    exe = {"A": a_exe, "B": b_exe}
    cells = [(w, m) for w in args.only.split(",") for m in args.methods.split(",")]
    samples = {(c, s): [] for c in cells for s in "AB"}
    for rep in range(args.reps):
        for cell in cells:
            w, m = cell
            for side in ("AB" if rep % 2 == 0 else "BA"):
                cmd = [exe[side], "--workload", w, "--impl", "ampire", "--method", m, "--reps", "1"]
                rc, out, err, _ = run_cell_env(cmd, args.timeout, env[side])
                got, _ = parse_lines(out, "ampire", m)
                if rc != 0 or not got:
                    print(f"warning: {side} {w} {m} failed: {err.strip()[-300:]}", file=sys.stderr)
                    samples[(cell, side)].append(None)
                    continue
                samples[(cell, side)].append(got[0]["value"])
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)

    print(f"A = working tree, B = {b_name}; {args.reps} interleaved pairs per cell")
    print(f"{'workload':<14}{'method':<12}{'metric':<14}{'A median':>14}{'B median':>14}"
          f"{'A/B median':>12}{'A/B range':>18}")
    for cell in cells:
        a, b = samples[(cell, "A")], samples[(cell, "B")]
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and y != 0]
        if not pairs:
            print(f"{cell[0]:<14}{cell[1]:<12}n/a")
            continue
        ratios = [x / y for x, y in pairs]
        metric = metric_of(cell[0])
        print(f"{cell[0]:<14}{cell[1]:<12}{metric:<14}"
              f"{statistics.median(x for x, _ in pairs):>14.4g}"
              f"{statistics.median(y for _, y in pairs):>14.4g}"
              f"{statistics.median(ratios):>12.3f}"
              f"{min(ratios):>9.3f}-{max(ratios):<8.3f}")


def metric_of(workload):
    return {"W1": "tasks/s", "W2": "tasks/s", "W3": "ms", "W4": "speedup",
            "W5": "GB/s"}.get(workload, "x ideal" if workload.startswith("W7") else "value")


def run_cell_env(cmd, timeout, env):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return run_cell(cmd, timeout)
    finally:
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    main()
