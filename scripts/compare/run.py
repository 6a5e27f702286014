#!/usr/bin/env python3
"""Benchmark ampire against MPIRE and multiprocessing (and Rust baselines).

Run from the repository root:

    python3 scripts/compare/run.py            # full run, writes BENCHMARKS.md + benchmarks.svg
    python3 scripts/compare/run.py --quick    # smoke test (< ~2 min)
    python3 scripts/compare/run.py --only W1,W3 --reps 3 --no-write
    python3 scripts/compare/run.py --impls mpire,multiprocessing   # Python peers only

It creates (once) a virtualenv at target/bench-venv with mpire==2.10.2 and
numpy, re-executes itself with that interpreter, builds
`cargo build --release --example compare`, then runs every workload for every
implementation, one fresh process per repetition, interleaved round-robin.
See README.md next to this file for the workloads and the JSON contract.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = ROOT / "target" / "bench-venv"
REQUIREMENTS = ["mpire==2.10.2", "numpy"]
MARKER = VENV / ".ampire-bench-requirements"
RAW_RESULTS = ROOT / "target" / "bench-results.json"
EXIT_UNSUPPORTED = 3

ALL_WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "F"]
W7_PARTS = ["W7-numerical", "W7-stateful", "W7-init"]
RUST_IMPLS = ("ampire", "rayon", "spawn_blocking", "machine")
AMPIRE_METHODS = ["fork", "forkserver", "spawn", "threading"]
MPIRE_METHODS = ["fork", "forkserver", "spawn", "threading"]
MP_ALL = ["fork", "forkserver", "spawn"]


def matrix(workload):
    """(impl, method) cells run for a workload, in display order."""
    if workload == "F":
        return [("machine", "-")]  # the machine's own floors, no pool
    cells = [("ampire", m) for m in AMPIRE_METHODS]
    if workload == "W6":
        return [("ampire", "fork"), ("mpire", "fork"), ("multiprocessing", "fork")]
    cells += [("rayon", "-"), ("spawn_blocking", "-")]
    cells += [("mpire", m) for m in MPIRE_METHODS]
    # multiprocessing.Pool's default context (fork on Linux, Python 3.11) except
    # for W3, where start-up per start method is the point.
    cells += [("multiprocessing", m) for m in (MP_ALL if workload == "W3" else ["fork"])]
    return cells


def rel(p):
    try:
        return os.path.relpath(p, Path.cwd())
    except ValueError:
        return str(p)


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Bootstrap: virtualenv with the peers, then re-exec under it
# ---------------------------------------------------------------------------

def venv_python():
    return VENV / "bin" / "python"


def in_venv():
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv():
    py = venv_python()
    if not py.exists():
        print(f"creating virtualenv {rel(VENV)} ...", flush=True)
        import venv
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(str(VENV))
        except Exception as e:  # e.g. Debian without python3-venv
            sys.exit(f"error: could not create {rel(VENV)}: {e}\n"
                     "(on Debian/Ubuntu: apt-get install python3-venv)")
    want = "\n".join(REQUIREMENTS) + "\n"
    if not MARKER.exists() or MARKER.read_text() != want:
        print(f"installing {' '.join(REQUIREMENTS)} into {rel(VENV)} ...", flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
                       check=True)
        MARKER.write_text(want)
    return py


def reexec_in_venv():
    py = ensure_venv()
    os.environ["AMPIRE_BENCH_REEXEC"] = "1"
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


# ---------------------------------------------------------------------------
# Rust side
# ---------------------------------------------------------------------------

def build_rust(tree=ROOT):
    """Build the compare example in `tree`; return the path of the binary or None."""
    cmd = ["cargo", "build", "--release", "--example", "compare", "--message-format=json-render-diagnostics"]
    print("building: " + " ".join(cmd[:5]), flush=True)
    try:
        p = subprocess.run(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        warn("cargo not found; ampire/rayon/spawn_blocking cells will be n/a")
        return None
    exe = None
    for line in p.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg.get("target", {}).get("name") == "compare":
            exe = msg["executable"]
    if p.returncode != 0 or not exe:
        tail = "\n".join(p.stderr.strip().splitlines()[-8:])
        warn("could not build the Rust example `compare`; ampire/rayon/spawn_blocking cells will be n/a\n"
             + "    " + tail.replace("\n", "\n    "))
        return None
    return exe


# ---------------------------------------------------------------------------
# Running one cell
# ---------------------------------------------------------------------------

def sanitize(s):
    """Strip this machine's absolute paths from text that goes into reports."""
    s = s.replace(str(ROOT) + os.sep, "").replace(str(ROOT), ".")
    return re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)", r"\1", s)


def run_cell(cmd, timeout):
    """Run one fresh process. Returns (rc, stdout, stderr, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the whole group this cell started
        out, err = p.communicate()
        rc, err = -9, err + f"\ntimed out after {timeout} s"
    return rc, out, err, time.perf_counter() - t0


def parse_lines(out, impl, method):
    got, bad = [], []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            float(obj["value"])
            obj["workload"], obj["metric"]  # noqa: B018
        except (ValueError, KeyError, TypeError):
            bad.append(line)
            continue
        if obj.get("impl") != impl or obj.get("method") != method:
            bad.append(line)
            continue
        got.append({"workload": obj["workload"], "impl": impl, "method": method,
                    "metric": obj["metric"], "value": float(obj["value"])})
    return got, bad


# ---------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------

def machine():
    def first(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "unknown"

    def cmd_out(cmd):
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout.strip() \
                or "unknown"
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    mem = first("/proc/meminfo", "MemTotal")
    try:
        mem = f"{int(mem.split()[0]) / 1024 / 1024:.1f} GiB"
    except (ValueError, IndexError):
        pass
    try:
        from importlib.metadata import version
        mpire_v, numpy_v = version("mpire"), version("numpy")
    except Exception:
        mpire_v = numpy_v = "not installed"
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "rustc": cmd_out(["rustc", "--version"]),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "mpire": mpire_v,
        "numpy": numpy_v,
    }


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description="Benchmark ampire against MPIRE and multiprocessing.")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and 2 repetitions: a smoke test")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per cell (default 5; 2 with --quick)")
    ap.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3 (W7 = all three W7 parts)")
    ap.add_argument("--impls", default="", help="comma-separated implementations to run, e.g. "
                    "mpire,multiprocessing (default: all: ampire,rayon,spawn_blocking,mpire,multiprocessing)")
    ap.add_argument("--no-write", action="store_true", help="print the table only; don't write BENCHMARKS.md")
    ap.add_argument("--no-build", action="store_true", help="don't run cargo build; use the existing binary")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per process (default 600; 180 quick)")
    ap.add_argument("--out-dir", default=None, help="where to write BENCHMARKS.md and benchmarks.svg "
                    "(default: the repository root)")
    ap.add_argument("--results", metavar="JSON", help="don't run anything: re-render the report from a raw "
                    f"results file written by an earlier run ({rel(RAW_RESULTS)})")
    return ap.parse_args()


def main():
    args = parse_args()
    if not in_venv() and not os.environ.get("AMPIRE_BENCH_REEXEC"):
        reexec_in_venv()
    if not in_venv():
        warn(f"not running inside {rel(VENV)}; continuing with {sys.executable}")

    sys.dont_write_bytecode = True  # no __pycache__ in scripts/compare
    sys.path.insert(0, str(HERE))
    import peers
    import report

    if args.results:
        raw = json.loads(Path(args.results).read_text())
    else:
        raw = run_all(args, peers)
    titles = report.workload_titles(peers.SIZES, raw["meta"]["quick"])
    groups = report.build_rows(raw)
    print()
    print(report.text_table(groups))
    if args.no_write:
        return 0
    m = raw["meta"]["machine"]
    n = raw["meta"]["reps"]
    subtitle = (f"median of {n} run{'s' if n != 1 else ''} per bar  |  {m['cpu']}, {m['nproc']} CPUs, {m['memory']}  |  "
                f"{m['rustc'].split(' (')[0]}, {m['python']}, MPIRE {m['mpire']}  |  {raw['meta']['date']}")
    svg = report.svg_chart(groups, titles, subtitle, raw["meta"]["quick"])
    out = Path(args.out_dir) if args.out_dir else ROOT
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.svg").write_text(svg)
    (out / "BENCHMARKS.md").write_text(report.markdown_report(raw, groups, titles, "benchmarks.svg"))
    print(f"\nwrote {rel(out / 'BENCHMARKS.md')} and {rel(out / 'benchmarks.svg')}")
    return 0


def run_all(args, peers):
    quick = args.quick
    reps = args.reps if args.reps is not None else (2 if quick else 5)
    if reps < 1:
        sys.exit("error: --reps must be at least 1")
    timeout = args.timeout or (180 if quick else 600)
    workloads = [w.strip().upper() for w in args.only.split(",") if w.strip()] or ALL_WORKLOADS
    for w in workloads:
        if w not in ALL_WORKLOADS:
            sys.exit(f"error: unknown workload {w!r}; choose from {','.join(ALL_WORKLOADS)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    known = ["ampire", "rayon", "spawn_blocking", "mpire", "multiprocessing", "machine"]
    for i in impls:
        if i not in known:
            sys.exit(f"error: unknown implementation {i!r}; choose from {','.join(known)}")

    plan = {w: [c for c in matrix(w) if not impls or c[0] in impls] for w in workloads}
    rust_needed = any(c[0] in RUST_IMPLS for cs in plan.values() for c in cs)
    rust_bin = None
    if rust_needed:
        if args.no_build:
            cand = ROOT / "target" / "release" / "examples" / "compare"
            rust_bin = str(cand) if cand.exists() else None
            if not rust_bin:
                warn(f"{rel(cand)} does not exist; Rust cells will be n/a")
        else:
            rust_bin = build_rust()

    # The command as documented; --out-dir only moves the report, so leave it out.
    args_in, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--out-dir":
            skip = True
        elif not a.startswith("--out-dir="):
            args_in.append(a)
    argv = ["python3", "scripts/compare/run.py", *args_in]
    raw = {
        "meta": {"command": " ".join(shlex.quote(a) for a in argv), "quick": quick, "reps": reps,
                 "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "machine": machine()},
        "cells": [], "samples": [],
    }
    cell_state = {}
    for w in workloads:
        for impl, method in plan[w]:
            c = {"workload": w, "impl": impl, "method": method, "status": "ok", "errors": [], "runs": 0}
            cell_state[(w, impl, method)] = c
            raw["cells"].append(c)

    total = sum(len(cs) for cs in plan.values()) * reps
    done = 0
    t_start = time.perf_counter()
    for w in workloads:
        cells = plan[w]
        for rep in range(reps):
            # Round-robin, rotated each repetition so no implementation always goes first.
            order = cells[rep % len(cells):] + cells[:rep % len(cells)] if cells else []
            for impl, method in order:
                done += 1
                c = cell_state[(w, impl, method)]
                tag = f"[{done}/{total}] {w} rep {rep + 1}/{reps} {impl}/{method}"
                if c["status"] == "unsupported":
                    continue
                if impl in RUST_IMPLS:
                    if not rust_bin:
                        c["status"] = "n/a"
                        if not c["errors"]:
                            c["errors"].append("Rust example `compare` not built")
                        continue
                    cmd = [rust_bin]
                else:
                    cmd = [sys.executable, str(HERE / "peers.py")]
                # W7's parts each run in a fresh process, like every repetition: a part must not
                # pay for what the one before it left behind (a thread pool still freeing the
                # state of the last one, a warm allocator).
                rc, out, err, secs = 0, "", "", 0.0
                for part in W7_PARTS if w == "W7" else [w]:
                    args_part = ["--workload", part, "--impl", impl, "--method", method, "--reps", "1"]
                    p_rc, p_out, p_err, p_secs = run_cell(cmd + args_part + (["--quick"] if quick else []),
                                                         timeout)
                    out, err, secs = out + p_out, err + p_err, secs + p_secs
                    if p_rc != 0:
                        rc = p_rc
                        break
                got, bad = parse_lines(out, impl, method)
                for g in got:
                    g["rep"] = rep
                raw["samples"].extend(got)
                c["runs"] += 1
                if rc == EXIT_UNSUPPORTED:
                    c["status"] = "unsupported"
                    print(f"{tag}: not applicable ({err.strip().splitlines()[-1] if err.strip() else 'exit 3'})",
                          flush=True)
                    continue
                if bad:
                    warn(f"{tag}: ignored {len(bad)} malformed stdout line(s), e.g. {bad[0][:120]!r}")
                if rc != 0 or not got:
                    tail = "\n".join(err.strip().splitlines()[-6:]) or "(no stderr)"
                    reason = f"exit {rc}" if rc != 0 else "no result line"
                    warn(f"{tag}: {reason} after {secs:.1f} s; stderr tail:\n    " + tail.replace("\n", "\n    "))
                    last = err.strip().splitlines()[-1] if err.strip() else "(no stderr)"
                    c["errors"].append(sanitize(f"{reason}: {last}")[:300])
                    if not got and not any(s for s in raw["samples"]
                                           if s["impl"] == impl and s["method"] == method
                                           and s["workload"].split("-")[0] == w):
                        c["status"] = "n/a"
                    continue
                summary = ", ".join(f"{g['workload']} {g['metric']}={g['value']:.4g}" for g in got)
                print(f"{tag}: {summary}  ({secs:.1f} s)", flush=True)
    for c in raw["cells"]:
        if c["status"] == "n/a" and any(s["impl"] == c["impl"] and s["method"] == c["method"]
                                        and s["workload"].split("-")[0] == c["workload"] for s in raw["samples"]):
            c["status"] = "ok"  # some repetitions failed, others gave results
    print(f"\nall runs done in {time.perf_counter() - t_start:.0f} s", flush=True)
    RAW_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RAW_RESULTS.write_text(json.dumps(raw, indent=1))
    print(f"raw results: {rel(RAW_RESULTS)}")
    return raw


if __name__ == "__main__":
    sys.exit(main())
