#!/usr/bin/env python3
"""W7-numerical, phase by phase: where a pool's time goes, per start method.

Run from the repository root:

    python3 scripts/compare/phases.py --reps 9

Builds the `compare` example, then runs W7-numerical once per method per repetition
(interleaved, a fresh process each) and prints the medians of: ideal time (serial / 2),
building the pool (the shared image included), the map, the shutdown, and the
end-to-end ratio to ideal. The phases are the ones `compare` prints on stderr.
"""

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from run import build_rust  # noqa: E402

METHODS = ["threading", "fork", "forkserver", "spawn"]
UNITS = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "ns": 1e-6}


def phase(text, name):
    m = re.search(name + r" ([0-9.]+)(ms|µs|ns|s)\b", text)
    if not m:
        sys.exit(f"error: no '{name}' in compare's output:\n{text}")
    return float(m.group(1)) * UNITS[m.group(2)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9, help="runs per method (default 9)")
    a = ap.parse_args()
    exe = build_rust(ROOT)
    if not exe:
        sys.exit("error: could not build the compare example")
    rows = {m: [] for m in METHODS}
    for _ in range(a.reps):
        for m in METHODS:
            out = subprocess.run([str(exe), "--workload", "W7-numerical", "--impl", "ampire",
                                  "--method", m, "--reps", "1"], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"error: compare failed under {m}:\n{out.stderr}")
            ideal = phase(out.stderr, "serial") / 2
            built, mapped, took = (phase(out.stderr, p) for p in ("built", "mapped", "shut down"))
            rows[m].append((ideal, built, mapped - built, took - mapped, took / ideal))
    print(f"W7-numerical, medians of {a.reps} interleaved runs per method (ms)")
    print(f"{'method':11} {'ideal':>7} {'build':>7} {'map':>7} {'shutdown':>9} {'x ideal':>8}")
    for m, runs in rows.items():
        ideal, build, mapping, shut, ratio = (statistics.median(c) for c in zip(*runs))
        print(f"{m:11} {ideal:7.1f} {build:7.1f} {mapping:7.1f} {shut:9.1f} {ratio:8.3f}")


if __name__ == "__main__":
    main()
