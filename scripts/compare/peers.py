#!/usr/bin/env python3
"""Python peer runner for the ampire comparison (MPIRE and multiprocessing).

Same command line and output as the Rust side, `target/release/examples/compare`:

    python peers.py --workload W1 --impl mpire --method fork --reps 1 [--quick]

prints one JSON object per line on stdout per repetition, e.g.

    {"workload":"W1","impl":"mpire","method":"fork","metric":"tasks_per_s","value":1234567.0}

Diagnostics go to stderr. Exit code 3 means "this impl/method cannot run this
workload" (shown as "-" in the table, not as a failure); any other non-zero
exit is a failure. The workloads, their sizes and the timed regions are
specified in README.md next to this file; keep both in sync.

Only the standard library is imported at module level, so that `spawn` and
`forkserver` children, which re-import this file as `__mp_main__`, start as
fast as the peer allows; `numpy` is imported where it is used, and `mpire`
only for `--impl mpire` (at the top of the main module, as in a user script).
"""

import argparse
import json
import math
import multiprocessing as mp
import multiprocessing.connection  # noqa: F401  (import before any timing)
import multiprocessing.pool  # noqa: F401
import multiprocessing.queues  # noqa: F401
import multiprocessing.synchronize  # noqa: F401
import os
import random
import sys
import threading
import time
from array import array
from collections import defaultdict

N_JOBS = 2
EXIT_UNSUPPORTED = 3

if os.environ.get("AMPIRE_PEERS_IMPORT_MPIRE") == "1":
    # Set by main() for --impl mpire: like a user script with `from mpire
    # import WorkerPool` at the top, spawn children and the fork server (which
    # preloads __main__) import MPIRE with the main module.
    import mpire  # noqa: F401

# ---------------------------------------------------------------------------
# Sizes. (full, quick). README.md documents the same numbers for the Rust side.
# ---------------------------------------------------------------------------
SIZES = {
    "W1_tasks": (1_000_000, 100_000),
    "W2_tasks": (100_000, 10_000),
    "W4_tasks": (200, 40),
    "W4_task_ms": (10.0, 10.0),
    "W5_tasks": (1_000, 100),
    "W5_bytes": (1 << 20, 1 << 20),
    "W6_bytes": (1 << 30, 256 << 20),
    "W7N_image": (1500, 600),
    "W7N_filters": (20, 10),
    "W7S_docs": (100, 30),
    "W7S_words": (1_000, 1_000),
    "W7S_delta": (500, 500),
    "W7S_word_bytes": (20, 20),
    "W7I_init_ms": (200.0, 100.0),
    "W7I_task_ms": (5.0, 5.0),
    "W7I_runs": (10, 4),
    "W7I_evals": (20, 10),
    "W7I_table_len": (1 << 20, 1 << 20),
}
QUICK = False


def size(name):
    full, quick = SIZES[name]
    return quick if QUICK else full


class Unsupported(Exception):
    """This impl/method combination does not apply to the workload."""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def emit(workload, impl, method, metric, value):
    print(json.dumps({"workload": workload, "impl": impl, "method": method,
                      "metric": metric, "value": float(value)},
                     separators=(",", ":")), flush=True)


# ---------------------------------------------------------------------------
# Task functions. Module level so that every start method can pickle them.
# ---------------------------------------------------------------------------
_G = {}  # per-process globals for multiprocessing initializers / fork inheritance


def double(x):
    return x * 2


def plus_one(x):
    return x + 1


def length(b):
    return len(b)


def worker_identity(_):
    time.sleep(0.02)
    return os.getpid(), threading.get_ident()


def mpire_worker_identity(_):
    return worker_identity(_)


def busy(n):
    """Pure-Python CPU burner; W4 and W7-init calibrate n to a wall time."""
    x = 0
    for i in range(n):
        x += i ^ (i >> 3)
    return x


def calibrate_busy(target_ms):
    """Return n such that busy(n) takes about target_ms on this machine."""
    n = 20_000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        busy(n)
        best = min(best, time.perf_counter() - t0)
    n = max(1, int(n * (target_ms / 1000.0) / best))
    best = float("inf")  # refine once at the final size
    for _ in range(3):
        t0 = time.perf_counter()
        busy(n)
        best = min(best, time.perf_counter() - t0)
    return max(1, int(n * (target_ms / 1000.0) / best))


# --- pools -----------------------------------------------------------------

def make_pool(impl, method, **kw):
    """A started-on-demand pool of N_JOBS workers. kw: mpire WorkerPool
    kwargs, or for multiprocessing `initializer`/`initargs`."""
    if impl == "mpire":
        if method not in ("fork", "forkserver", "spawn", "threading"):
            raise Unsupported(f"mpire has no start method {method!r}")
        from mpire import WorkerPool
        return WorkerPool(n_jobs=N_JOBS, start_method=method, **kw)
    if impl == "multiprocessing":
        if method not in ("fork", "forkserver", "spawn"):
            raise Unsupported(f"multiprocessing has no start method {method!r}")
        return mp.get_context(method).Pool(N_JOBS, **kw)
    raise Unsupported(f"unknown impl {impl!r}")


def close_pool(impl, pool):
    if impl == "mpire":
        pool.stop_and_join()
        pool.terminate()
    else:
        pool.close()
        pool.join()


def warm_up(impl, pool):
    """Make sure every worker is up and has completed at least one task."""
    seen = set()
    for _ in range(50):
        if impl == "mpire":
            ids = pool.map(mpire_worker_identity, range(2 * N_JOBS), chunk_size=1)
        else:
            ids = pool.map(worker_identity, range(2 * N_JOBS), chunksize=1)
        seen.update(ids)
        if len(seen) >= N_JOBS:
            return
    log(f"warning: warm-up saw only {len(seen)} distinct workers")


def timed_map(impl, pool, func, args, chunk_size=None):
    """Time one map on an already warm pool; returns (seconds, results)."""
    if impl == "mpire":
        kw = {} if chunk_size is None else {"chunk_size": chunk_size}
        t0 = time.perf_counter()
        res = pool.map(func, args, **kw)
        t1 = time.perf_counter()
    else:
        kw = {} if chunk_size is None else {"chunksize": chunk_size}
        t0 = time.perf_counter()
        res = pool.map(func, args, **kw)
        t1 = time.perf_counter()
    return t1 - t0, res


def steady_state(impl, method, func, args, chunk_size=None):
    pool = make_pool(impl, method, **({"keep_alive": True} if impl == "mpire" else {}))
    try:
        warm_up(impl, pool)
        return timed_map(impl, pool, func, args, chunk_size)
    finally:
        close_pool(impl, pool)


# ---------------------------------------------------------------------------
# W1 / W2: trivial tasks
# ---------------------------------------------------------------------------

def w1(impl, method, wl="W1"):
    n = size("W1_tasks")
    secs, res = steady_state(impl, method, double, range(n))
    assert len(res) == n and res[-1] == 2 * (n - 1), "wrong W1 results"
    emit(wl, impl, method, "tasks_per_s", n / secs)


def w2(impl, method, wl="W2"):
    n = size("W2_tasks")
    secs, res = steady_state(impl, method, double, range(n), chunk_size=1)
    assert len(res) == n and res[-1] == 2 * (n - 1), "wrong W2 results"
    emit(wl, impl, method, "tasks_per_s", n / secs)


# ---------------------------------------------------------------------------
# W3: start 2 workers, one result, shut down
# ---------------------------------------------------------------------------

def _start_apply_stop(impl, method):
    t0 = time.perf_counter()
    pool = make_pool(impl, method)
    if impl == "mpire":
        r = pool.apply(plus_one, args=(41,))
        pool.stop_and_join()
    else:
        r = pool.apply(plus_one, (41,))
        pool.close()
        pool.join()
    t1 = time.perf_counter()
    if impl == "mpire":
        pool.terminate()  # no-op after stop_and_join; releases comms
    assert r == 42
    return (t1 - t0) * 1000.0


def w3(impl, method, wl="W3"):
    if method == "forkserver":
        # The fork server is per parent process. First pool: includes starting
        # the server (reported as latency_cold_ms). Second pool: server warm
        # (reported as latency_ms, the headline number).
        cold = _start_apply_stop(impl, method)
        warm = _start_apply_stop(impl, method)
        emit(wl, impl, method, "latency_ms", warm)
        emit(wl, impl, method, "latency_cold_ms", cold)
    else:
        emit(wl, impl, method, "latency_ms", _start_apply_stop(impl, method))


# ---------------------------------------------------------------------------
# W4: CPU-bound ~10 ms tasks, speedup
# ---------------------------------------------------------------------------

def w4(impl, method, wl="W4"):
    n_tasks = size("W4_tasks")
    n = calibrate_busy(size("W4_task_ms"))
    args = [n] * n_tasks
    t0 = time.perf_counter()
    serial = [busy(a) for a in args]
    t_serial = time.perf_counter() - t0
    t_pool, res = steady_state(impl, method, busy, args)
    assert res == serial, "wrong W4 results"
    log(f"W4 {impl}/{method}: task {t_serial / n_tasks * 1000:.2f} ms, serial {t_serial:.3f} s, pool {t_pool:.3f} s")
    emit(wl, impl, method, "speedup", t_serial / t_pool)


# ---------------------------------------------------------------------------
# W5: 1 MiB payloads, GB/s
# ---------------------------------------------------------------------------

def w5(impl, method, wl="W5"):
    n_tasks, nbytes = size("W5_tasks"), size("W5_bytes")
    pool = make_pool(impl, method, **({"keep_alive": True} if impl == "mpire" else {}))
    try:
        warm_up(impl, pool)
        # Distinct objects: pickle memoises repeated references to the same
        # object inside one chunk, which would send 1 MiB instead of 125 MiB.
        base = os.urandom(nbytes)
        payloads = [i.to_bytes(4, "little") + base[4:] for i in range(n_tasks)]
        secs, res = timed_map(impl, pool, length, payloads)
    finally:
        close_pool(impl, pool)
    assert sum(res) == n_tasks * nbytes, "wrong W5 results"
    emit(wl, impl, method, "gb_per_s", n_tasks * nbytes / secs / 1e9)


# ---------------------------------------------------------------------------
# W6: fork with a 1 GiB shared object, workers' PSS
# ---------------------------------------------------------------------------

def read_smaps_rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])  # KiB
    return out


def _touch_and_wait(big):
    n = big.count(b"\x02")  # reads every page of the object
    _G["queue"].put(os.getpid())
    if not _G["event"].wait(120):
        raise RuntimeError("parent never released the worker")
    return n + len(big)


def touch_mp(_):
    return _touch_and_wait(_G["big"])


def touch_mpire(shared, _):
    return _touch_and_wait(shared)


def w6(impl, method, wl="W6"):
    if method != "fork":
        raise Unsupported("W6 is defined for the fork start method only")
    nbytes = size("W6_bytes")
    ctx = mp.get_context("fork")
    # Globals inherited by fork (the queue/event cannot be pickled into tasks).
    _G["queue"], _G["event"] = ctx.Queue(), ctx.Event()
    big = b"\x01" * nbytes  # resident in the parent before the workers exist
    parent_before = read_smaps_rollup(os.getpid())["Pss"]
    if impl == "multiprocessing":
        _G["big"] = big
        pool = ctx.Pool(N_JOBS)
        pending = [pool.apply_async(touch_mp, (i,)) for i in range(N_JOBS)]
    elif impl == "mpire":
        pool = make_pool(impl, method, shared_objects=big)
        pending = [pool.apply_async(touch_mpire, args=(i,)) for i in range(N_JOBS)]
    else:
        raise Unsupported(impl)
    try:
        pids = [_G["queue"].get(timeout=120) for _ in range(N_JOBS)]
        if len(set(pids)) != N_JOBS:
            raise RuntimeError(f"expected {N_JOBS} distinct worker pids, got {pids}")
        rollups = [read_smaps_rollup(p) for p in pids]
        parent_after = read_smaps_rollup(os.getpid())["Pss"]
    finally:
        _G["event"].set()
    res = [p.get(timeout=120) for p in pending]
    assert res == [nbytes] * N_JOBS, "wrong W6 results"
    close_pool(impl, pool)
    pss_kib = sum(r["Pss"] for r in rollups)
    uss_kib = sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rollups)
    log(f"W6 {impl}/{method}: pids {pids}, Rss {[r['Rss'] for r in rollups]} KiB, "
        f"Pss {[r['Pss'] for r in rollups]} KiB")
    emit(wl, impl, method, "pss_mib", pss_kib / 1024)
    emit(wl, impl, method, "pss_pct", pss_kib * 1024 / nbytes * 100)
    emit(wl, impl, method, "uss_mib", uss_kib / 1024)
    # PSS adds up to the physical memory in use, so this is what the workers added in all.
    added_kib = max(0, parent_after + pss_kib - parent_before)
    emit(wl, impl, method, "added_mib", added_kib / 1024)
    emit(wl, impl, method, "added_pct", added_kib * 1024 / nbytes * 100)


# ---------------------------------------------------------------------------
# W7: MPIRE's benchmark suite shape. Value = pool time / (serial time / N_JOBS)
# ---------------------------------------------------------------------------

# --- W7-numerical: 2-D full convolution of a shared image with 4x4 filters ---

def make_image(n):
    import numpy as np
    i = np.arange(n, dtype=np.int64)[:, None]
    j = np.arange(n, dtype=np.int64)[None, :]
    return ((i * 31 + j * 17) % 256).astype(np.float64) / 255.0


def make_filters(k):
    import numpy as np
    return [np.sin(np.arange(16, dtype=np.float64) + 1.0 + 16.0 * f).reshape(4, 4) for f in range(k)]


def process_image(image, filt):
    """scipy.signal.convolve2d(image, filt, mode='full')[::5, ::5], in numpy."""
    import numpy as np
    h, w = image.shape
    kh, kw = filt.shape
    out = np.zeros((h + kh - 1, w + kw - 1))
    for a in range(kh):
        for b in range(kw):
            out[a:a + h, b:b + w] += filt[a, b] * image
    return out[::5, ::5]


def _set_image(image):
    _G["image"] = image


def process_image_mp(filt):
    return process_image(_G["image"], filt)


def w7_numerical(impl, method):
    n, k = size("W7N_image"), size("W7N_filters")
    filters = make_filters(k)

    t0 = time.perf_counter()
    image = make_image(n)
    serial = [float(process_image(image, f).sum()) for f in filters]
    t_serial = time.perf_counter() - t0

    t0 = time.perf_counter()
    image = make_image(n)
    if impl == "mpire":
        # Image shared once per worker (copy-on-write with fork).
        with make_pool(impl, method, shared_objects=image) as pool:
            res = [float(r.sum()) for r in pool.imap(process_image, filters)]
    else:
        # Best practice for multiprocessing: send the image once per worker
        # through the initializer (inherited with fork, pickled once otherwise).
        pool = make_pool(impl, method, initializer=_set_image, initargs=(image,))
        res = [float(r.sum()) for r in pool.imap(process_image_mp, filters)]
        close_pool(impl, pool)
    t_pool = time.perf_counter() - t0
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(res, serial)), "wrong W7-numerical results"
    return t_serial, t_pool


# --- W7-stateful: per-worker prefix counts over documents, gathered at exit ---

def make_documents():
    n_docs, n_words = size("W7S_docs"), size("W7S_words")
    delta, wb = size("W7S_delta"), size("W7S_word_bytes")
    rng = random.Random(42)
    docs = []
    for idx in range(n_docs):
        nw = n_words + (delta if idx % 2 == 0 else -delta)  # unbalanced on purpose
        data = rng.randbytes(nw * wb)
        docs.append([data[i:i + wb] for i in range(0, len(data), wb)])
    return docs


class StreamingPrefixCount:
    def __init__(self):
        self.prefix_count = defaultdict(int)

    def add_document(self, document):
        for word in document:
            for i in range(1, len(word)):
                self.prefix_count[word[:i]] += 1

    def get_popular(self):
        return {prefix for prefix, cnt in self.prefix_count.items() if cnt > 3}


def stateful_init(worker_state):
    worker_state["actor"] = StreamingPrefixCount()


def stateful_task(worker_state, document):
    worker_state["actor"].add_document(document)


def stateful_exit(worker_state):
    return worker_state["actor"].get_popular()


def _stateful_init_mp(barrier):
    _G["actor"] = StreamingPrefixCount()
    _G["barrier"] = barrier


def stateful_task_mp(document):
    _G["actor"].add_document(document)


def stateful_collect_mp(_):
    # All N_JOBS collect tasks block here until every worker holds one, so
    # each worker returns its own state exactly once.
    _G["barrier"].wait(120)
    return _G["actor"].get_popular()


def w7_stateful(impl, method):
    docs = make_documents()

    t0 = time.perf_counter()
    actor = StreamingPrefixCount()
    for d in docs:
        actor.add_document(d)
    serial = actor.get_popular()
    t_serial = time.perf_counter() - t0
    del actor

    t0 = time.perf_counter()
    popular = set()
    if impl == "mpire":
        from mpire.utils import make_single_arguments
        with make_pool(impl, method, use_worker_state=True) as pool:
            pool.map_unordered(stateful_task, make_single_arguments(docs, generator=False),
                               worker_init=stateful_init, worker_exit=stateful_exit)
            for s in pool.get_exit_results():
                popular |= s
    else:
        barrier = mp.get_context(method).Barrier(N_JOBS)
        pool = make_pool(impl, method, initializer=_stateful_init_mp, initargs=(barrier,))
        pool.map(stateful_task_mp, docs)
        for s in pool.map(stateful_collect_mp, range(N_JOBS), chunksize=1):
            popular |= s
        close_pool(impl, pool)
    t_pool = time.perf_counter() - t0
    # As in the original suite, the union of per-worker "popular" sets is not
    # the global answer, but a prefix seen > 3 times by one worker is seen
    # > 3 times overall, so it must be a subset of the serial answer.
    assert popular and popular <= serial, "wrong W7-stateful results"
    return t_serial, t_pool


# --- W7-init: expensive per-worker initialisation, tasks use the object ---

class Model:
    """Stands in for loading a model: ~init_ms of CPU plus a large table."""

    def __init__(self, init_busy_n, table_len):
        busy(init_busy_n)
        self.table = array("q", range(table_len))

    def evaluate(self, task_busy_n, idx):
        busy(task_busy_n)
        start = (idx * 7919) % (len(self.table) - 1024)
        return sum(self.table[start:start + 1024]) + idx


def init_init(init_busy_n, table_len, worker_state):
    worker_state["model"] = Model(init_busy_n, table_len)


def init_task(task_busy_n, worker_state, idx):
    return worker_state["model"].evaluate(task_busy_n, idx)


def _init_init_mp(init_busy_n, table_len):
    _G["model"] = Model(init_busy_n, table_len)


def init_task_mp(task_busy_n, idx):
    return _G["model"].evaluate(task_busy_n, idx)


def w7_init(impl, method):
    from functools import partial
    init_n = calibrate_busy(size("W7I_init_ms"))
    task_n = calibrate_busy(size("W7I_task_ms"))
    table_len, runs, evals = size("W7I_table_len"), size("W7I_runs"), size("W7I_evals")

    t0 = time.perf_counter()
    model = Model(init_n, table_len)
    serial = [sorted(model.evaluate(task_n, i) for i in range(evals)) for _ in range(runs)]
    t_serial = time.perf_counter() - t0
    del model

    t0 = time.perf_counter()
    out = []
    if impl == "mpire":
        # One pool kept alive over `runs` maps, so worker_init runs once per worker.
        task, init = partial(init_task, task_n), partial(init_init, init_n, table_len)
        with make_pool(impl, method, use_worker_state=True, keep_alive=True) as pool:
            for _ in range(runs):
                out.append(sorted(pool.imap_unordered(task, range(evals), worker_init=init)))
            pool.stop_and_join()
    else:
        pool = make_pool(impl, method, initializer=_init_init_mp, initargs=(init_n, table_len))
        task = partial(init_task_mp, task_n)
        for _ in range(runs):
            out.append(sorted(pool.imap_unordered(task, range(evals))))
        close_pool(impl, pool)
    t_pool = time.perf_counter() - t0
    assert out == serial, "wrong W7-init results"
    return t_serial, t_pool


W7_SUBS = {"W7-numerical": w7_numerical, "W7-stateful": w7_stateful, "W7-init": w7_init}


def w7(impl, method, wl="W7"):
    subs = list(W7_SUBS) if wl == "W7" else [wl]
    for sub in subs:
        t_serial, t_pool = W7_SUBS[sub](impl, method)
        ideal = t_serial / N_JOBS
        log(f"{sub} {impl}/{method}: serial {t_serial:.3f} s, pool {t_pool:.3f} s, ideal {ideal:.3f} s")
        emit(sub, impl, method, "ratio_to_ideal", t_pool / ideal)
        emit(sub, impl, method, "pool_ms", t_pool * 1e3)


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5, "W6": w6, "W7": w7,
             "W7-numerical": w7, "W7-stateful": w7, "W7-init": w7}


def main(argv=None):
    global QUICK
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    ap.add_argument("--impl", required=True, choices=["mpire", "multiprocessing"])
    ap.add_argument("--method", required=True)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    QUICK = a.quick
    if a.impl == "mpire":
        # Import MPIRE (and what it imports: numpy, tqdm, ...) before any clock
        # starts; spawn children still pay for it, as users' do.
        os.environ["AMPIRE_PEERS_IMPORT_MPIRE"] = "1"
        import mpire  # noqa: F401
        import mpire.utils  # noqa: F401
    try:
        for _ in range(a.reps):
            WORKLOADS[a.workload](a.impl, a.method, a.workload)
    except Unsupported as e:
        log(f"unsupported: {e}")
        return EXIT_UNSUPPORTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
