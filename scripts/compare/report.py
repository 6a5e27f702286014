"""Tables, BENCHMARKS.md and the hand-written SVG chart for run.py.

Standard library only. Input is the raw-results dict that run.py builds (and
saves as JSON), so a report can be re-rendered without re-running anything:
`python3 scripts/compare/run.py --results target/bench-results.json`.
"""

import html
import math
import statistics

# ---------------------------------------------------------------------------
# What is compared, and how
# ---------------------------------------------------------------------------

IMPL_LABEL = {
    "ampire": "ampire",
    "rayon": "rayon",
    "spawn_blocking": "tokio spawn_blocking",
    "mpire": "MPIRE",
    "multiprocessing": "mp.Pool",
    "machine": "this machine",
}
IMPL_ORDER = ["ampire", "rayon", "spawn_blocking", "mpire", "multiprocessing", "machine"]
METHOD_ORDER = ["fork", "forkserver", "spawn", "threading", "-"]
RUST_IMPLS = ("ampire", "rayon", "spawn_blocking")

# metric -> (unit, higher_is_better, axis title)
METRICS = {
    "tasks_per_s": ("tasks/s", True, "tasks per second"),
    "latency_ms": ("ms", False, "milliseconds, pool start to shutdown done"),
    "latency_cold_ms": ("ms", False, "milliseconds, incl. fork-server start"),
    "speedup": ("x", True, "speedup = serial time / pool time"),
    "gb_per_s": ("GB/s", True, "GB/s of payload sent to workers"),
    "added_pct": ("% of object", False, "memory the workers added (PSS, all processes), % of the object"),
    "added_mib": ("MiB", False, "memory the workers added (PSS, all processes), MiB"),
    "pss_pct": ("% of object", False, "sum of workers' PSS, % of the object's size"),
    "pss_mib": ("MiB", False, "sum of workers' PSS, MiB"),
    "uss_mib": ("MiB", False, "sum of workers' private memory (USS), MiB"),
    "ratio_to_ideal": ("x ideal", False, "pool time / (serial time / 2 workers)"),
    "pool_ms": ("ms", False, "pool time end to end, milliseconds"),
    # F, the machine's floors: no ratio (no peer does these).
    "wake_rtt_idle_us": ("µs", None, "hand-off and reply between two CPUs after 1 ms idle"),
    "wake_rtt_busy_us": ("µs", None, "hand-off and reply between two CPUs, back to back"),
    "wake_rtt_same_cpu_us": ("µs", None, "hand-off and reply on one CPU"),
    "fresh_write_gb_per_s": ("GB/s", None, "writing memory never touched before"),
    "warm_write_gb_per_s": ("GB/s", None, "writing the same memory again"),
    "spawn_wait_us": ("µs", None, "posix_spawn of `true` and waiting for it"),
}
METRIC_ORDER = list(METRICS)

PRIMARY = {
    "W1": "tasks_per_s", "W2": "tasks_per_s", "W3": "latency_ms", "W4": "speedup",
    "W5": "gb_per_s", "W6": "added_pct", "W7-numerical": "ratio_to_ideal",
    "W7-stateful": "ratio_to_ideal", "W7-init": "ratio_to_ideal",
}
WORKLOAD_ORDER = list(PRIMARY)
W7_SUBS = ["W7-numerical", "W7-stateful", "W7-init"]

# Reference lines: (workload, metric) -> (value, label). "Ideal" lines are physical limits for
# 2 workers; the chart draws the targets of TARGETS below them too.
N_WORKERS = 2
IDEAL_LINES = {
    ("W4", "speedup"): (float(N_WORKERS), f"ideal: {N_WORKERS}x"),
    ("W6", "pss_pct"): (100.0 * N_WORKERS / (N_WORKERS + 1),
                        f"perfect sharing: {100.0 * N_WORKERS / (N_WORKERS + 1):.1f}%"),
    ("W7-numerical", "ratio_to_ideal"): (1.0, "ideal: 1.0"),
    ("W7-stateful", "ratio_to_ideal"): (1.0, "ideal: 1.0"),
    ("W7-init", "ratio_to_ideal"): (1.0, "ideal: 1.0"),
}
# The targets of the benchmark issue, per start method: (workload, metric, methods, op, target,
# label). A target may be a function of the groups (W2: five times multiprocessing's median).
ALL_METHODS = ["fork", "forkserver", "spawn", "threading"]
PROCESS_METHODS = ["fork", "forkserver", "spawn"]


def mp_times_5(groups):
    for g in groups:
        if (g["workload"], g["metric"]) == ("W2", "tasks_per_s"):
            for r in g["rows"]:
                if r["impl"] == "multiprocessing" and "median" in r:
                    return 5 * r["median"]
    return None


TARGETS = [
    ("W1", "tasks_per_s", PROCESS_METHODS, ">=", 50e6, "50 M tasks/s"),
    ("W1", "tasks_per_s", ["threading"], ">=", 100e6, "100 M tasks/s"),
    ("W2", "tasks_per_s", ALL_METHODS, ">=", mp_times_5, "5x mp.Pool"),
    ("W3", "latency_ms", ["fork", "forkserver"], "<=", 1.0, "1 ms"),
    ("W3", "latency_ms", ["spawn"], "<=", 3.0, "3 ms"),
    ("W3", "latency_ms", ["threading"], "<=", 0.2, "0.2 ms"),
    ("W4", "speedup", ALL_METHODS, ">=", 1.95, "1.95x"),
    ("W5", "gb_per_s", ALL_METHODS, ">=", 4.0, "4 GB/s"),
    ("W6", "added_pct", ["fork"], "<", 5.0, "5% of the object"),
    ("W7-numerical", "ratio_to_ideal", ALL_METHODS, "<=", 1.05, "1.05x ideal"),
    ("W7-stateful", "ratio_to_ideal", ALL_METHODS, "<=", 1.05, "1.05x ideal"),
    ("W7-init", "ratio_to_ideal", ALL_METHODS, "<=", 1.05, "1.05x ideal"),
]


# Where a target lies below what the workload itself allows.
TARGET_NOTES = {
    "W7-init": "floor 1.167: init runs in every worker (see scripts/compare/README.md)",
}


def target_rows(groups):
    """One row per (target, method): the ampire median, the target, met or not."""
    ops = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t}
    out = []
    for wl, metric, methods, op, target, label in TARGETS:
        t = target(groups) if callable(target) else target
        g = next((g for g in groups if (g["workload"], g["metric"]) == (wl, metric)), None)
        for m in methods:
            r = g and next((r for r in g["rows"] if (r["impl"], r["method"]) == ("ampire", m)), None)
            if not r or "median" not in r or t is None:
                continue
            unit = METRICS[metric][0]
            out.append([wl, m, f"{fmt(r['median'])} {unit}", f"{op} {label}",
                        "met" if ops[op](r["median"], t) else "**missed**", TARGET_NOTES.get(wl, "")])
    return out


def markdown_targets(groups):
    rows = target_rows(groups)
    if not rows:
        return ""
    out = ["| workload | method | ampire (median) | target | | note |", "|---|---|---:|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def reference_lines(workload, metric, groups):
    """The chart's dashed lines for a panel: the ideal where one exists, then each target."""
    lines = [IDEAL_LINES[(workload, metric)]] if (workload, metric) in IDEAL_LINES else []
    for wl, m, methods, _op, target, label in TARGETS:
        t = target(groups) if callable(target) else target
        if (wl, m) == (workload, metric) and t is not None:
            which = "" if methods == ALL_METHODS else f" ({', '.join(methods)})"
            lines.append((t, f"target: {label}{which}"))
    return lines


def workload_titles(sizes, quick):
    """Human titles for each workload, with the sizes actually used."""
    def s(name):
        full, q = sizes[name]
        return q if quick else full

    def count(n):
        if n >= 1_000_000 and n % 1_000_000 == 0:
            return f"{n // 1_000_000}M"
        if n >= 10_000 and n % 1_000 == 0:
            return f"{n // 1_000}k"
        return f"{n:,}"

    mib = s("W6_bytes") >> 20
    obj = f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"
    return {
        "W1": f"W1  {count(s('W1_tasks'))} trivial tasks (x*2), default chunking",
        "W2": f"W2  {count(s('W2_tasks'))} trivial tasks, chunk size 1",
        "W3": "W3  start 2 workers, get 1 result, shut down",
        "W4": f"W4  {s('W4_tasks')} CPU-bound tasks of ~{s('W4_task_ms'):g} ms",
        "W5": f"W5  {count(s('W5_tasks'))} tasks x {s('W5_bytes') >> 20} MiB payload",
        "W6": f"W6  fork + {obj} shared object: memory the workers add",
        "W7-numerical": f"W7 numerical  {s('W7N_filters')} convolutions of a "
                        f"{s('W7N_image')}x{s('W7N_image')} image",
        "W7-stateful": f"W7 stateful  prefix counts over {s('W7S_docs')} documents",
        "W7-init": f"W7 expensive init  ~{s('W7I_init_ms'):g} ms init, "
                   f"{s('W7I_runs') * s('W7I_evals')} tasks of ~{s('W7I_task_ms'):g} ms",
        "F": "F  machine floors (no pool)",
    }


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------

def expand(workload):
    return list(W7_SUBS) if workload == "W7" else [workload]


def cell_key(impl, method):
    return (IMPL_ORDER.index(impl) if impl in IMPL_ORDER else 99,
            METHOD_ORDER.index(method) if method in METHOD_ORDER else 99, impl, method)


def counterpart_method(impl, method):
    """Which ampire row a peer row is compared with."""
    if impl in ("rayon", "spawn_blocking"):
        return "threading"
    return method


def build_rows(raw):
    """Rows of the result table, grouped by (workload, metric).

    Returns a list of groups: {"workload", "metric", "rows": [row...]}, where a
    row is {"impl","method","status","median","min","max","n","ratio"}.
    """
    samples = {}
    for s in raw["samples"]:
        samples.setdefault((s["workload"], s["metric"], s["impl"], s["method"]), []).append(s["value"])
    status = {}
    for c in raw["cells"]:
        for wl in expand(c["workload"]):
            status[(wl, c["impl"], c["method"])] = c["status"]
    requested = {}
    for c in raw["cells"]:
        for wl in expand(c["workload"]):
            requested.setdefault(wl, set()).add((c["impl"], c["method"]))
    for (wl, _m, impl, method) in samples:  # lines for workloads nobody asked for
        requested.setdefault(wl, set()).add((impl, method))

    groups = []
    for wl in sorted(requested, key=lambda w: (WORKLOAD_ORDER.index(w) if w in WORKLOAD_ORDER else 99, w)):
        metrics = {m for (w, m, _i, _me) in samples if w == wl}
        primary = PRIMARY.get(wl)
        if primary:
            metrics.add(primary)
        for metric in sorted(metrics, key=lambda m: (m != primary, METRIC_ORDER.index(m) if m in METRIC_ORDER else 99, m)):
            rows = []
            for impl, method in sorted(requested[wl], key=lambda c: cell_key(*c)):
                vals = samples.get((wl, metric, impl, method), [])
                st = status.get((wl, impl, method), "ok")
                if not vals and metric != primary:
                    continue  # secondary metrics: only rows that reported them
                row = {"impl": impl, "method": method, "n": len(vals),
                       "status": "ok" if vals else ("unsupported" if st == "unsupported" else "n/a")}
                if vals:
                    row.update(median=statistics.median(vals), min=min(vals), max=max(vals))
                rows.append(row)
            if not rows:
                continue
            higher = METRICS.get(metric, (None, None))[1]
            by_cell = {(r["impl"], r["method"]): r for r in rows}
            for r in rows:
                r["ratio"] = None
                if r["impl"] == "ampire" or "median" not in r or higher is None:
                    continue
                a = by_cell.get(("ampire", counterpart_method(r["impl"], r["method"])))
                if not a or "median" not in a or a["median"] == 0 or r["median"] == 0:
                    continue
                r["ratio"] = a["median"] / r["median"] if higher else r["median"] / a["median"]
            groups.append({"workload": wl, "metric": metric, "rows": rows})
    return groups


# ---------------------------------------------------------------------------
# Text and markdown tables
# ---------------------------------------------------------------------------

def fmt(v):
    if v is None:
        return ""
    a = abs(v)
    if a >= 10_000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_tick(v):
    a = abs(v)
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{round(v / div, 6):g}{suf}"
    return f"{round(v, 6):g}"


def fmt_short(v):
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


RATIO_HEADER = ("ampire/peer (same start method; threading for rayon/spawn_blocking), "
                ">1 = ampire better: throughput and speedup ampire/peer, "
                "latency, time, memory and ratio-to-ideal peer/ampire")


def table_cells(groups):
    header = ["workload", "metric", "implementation", "method", "median", "unit", "min..max", "n",
              "ratio"]
    out = []
    for g in groups:
        unit = METRICS.get(g["metric"], (g["metric"],))[0]
        for r in g["rows"]:
            if r["status"] == "ok":
                med, rng = fmt(r["median"]), f"{fmt(r['min'])}..{fmt(r['max'])}"
            else:
                med, rng = ("-" if r["status"] == "unsupported" else "n/a"), ""
            no_ratio = r["impl"] == "ampire" or METRICS.get(g["metric"], (None, None))[1] is None
            ratio = "" if no_ratio else (f"{r['ratio']:.2f}" if r["ratio"] else "n/a")
            out.append([g["workload"], g["metric"], IMPL_LABEL.get(r["impl"], r["impl"]), r["method"],
                        med, unit, rng, str(r["n"]), ratio])
    return header, out


def text_table(groups):
    header, rows = table_cells(groups)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {4, 6, 7, 8}
    lines = []

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines.append(line(header))
    lines.append("  ".join("-" * w for w in widths))
    prev = None
    for r in rows:
        if prev is not None and (r[0], r[1]) != prev:
            lines.append("")
        prev = (r[0], r[1])
        lines.append(line(r))
    lines.append("")
    lines.append("ratio = " + RATIO_HEADER)
    return "\n".join(lines)


def markdown_table(groups):
    header, rows = table_cells(groups)
    header = [h if h != "ratio" else "ratio (>1: ampire better)" for h in header]
    right = {4, 6, 7, 8}
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    prev = None
    for r in rows:
        cells = list(r)
        if (r[0], r[1]) == prev:
            cells[0] = cells[1] = ""
        prev = (r[0], r[1])
        if r[2] == "ampire":
            cells[2] = "**ampire**"
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# SVG chart
# ---------------------------------------------------------------------------

COLOURS = {
    ("ampire", "fork"): "#08519c", ("ampire", "forkserver"): "#2171b5",
    ("ampire", "spawn"): "#4292c6", ("ampire", "threading"): "#6baed6",
    ("rayon", "-"): "#238b45", ("spawn_blocking", "-"): "#74c476",
    ("mpire", "fork"): "#404040", ("mpire", "forkserver"): "#666666",
    ("mpire", "spawn"): "#8c8c8c", ("mpire", "threading"): "#b3b3b3",
    ("multiprocessing", "fork"): "#8c510a", ("multiprocessing", "forkserver"): "#bf812d",
    ("multiprocessing", "spawn"): "#dfc27d",
}
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


def colour(impl, method):
    return COLOURS.get((impl, method), "#999999")


def nice_ceil(x):
    if x <= 0:
        return 1.0
    e = math.floor(math.log10(x))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * 10 ** e >= x * 0.999:
            return m * 10 ** e
    return 10 ** (e + 1)


def linear_ticks(hi):
    raw = hi / 5
    e = math.floor(math.log10(raw))
    step = min((m * 10 ** e for m in (1, 2, 2.5, 5, 10) if m * 10 ** e >= raw), default=10 ** (e + 1))
    n = int(math.floor(hi / step + 1e-9))
    return [i * step for i in range(n + 1)]


class Scale:
    def __init__(self, values, refs, width):
        vals = [v for v in values if v > 0]
        self.width = width
        hi_all = max(vals + refs) if (vals or refs) else 1.0
        lo_all = min(vals + refs) if (vals or refs) else 1.0
        self.log = bool(vals) and hi_all / max(lo_all, 1e-300) > 20
        if self.log:
            self.lo = 10 ** math.floor(math.log10(lo_all))
            self.hi = 10 ** math.ceil(math.log10(hi_all))
            if self.hi <= self.lo:
                self.hi = self.lo * 10
        else:
            self.lo, self.hi = 0.0, nice_ceil(hi_all * 1.04)

    def x(self, v):
        if self.log:
            v = min(max(v, self.lo), self.hi)
            return self.width * (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return self.width * (v - self.lo) / (self.hi - self.lo)

    def ticks(self):
        if not self.log:
            return linear_ticks(self.hi)
        decades = round(math.log10(self.hi / self.lo))
        mults = (1, 2, 5) if decades <= 2 else (1,)
        out = []
        e = round(math.log10(self.lo))
        while 10 ** e <= self.hi * 1.0001:
            out.extend(m * 10 ** e for m in mults if self.lo * 0.9999 <= m * 10 ** e <= self.hi * 1.0001)
            e += 1
        return out


def esc(s):
    return html.escape(str(s), quote=True)


def svg_chart(groups, titles, subtitle, quick):
    """One panel per workload (its primary metric), two columns."""
    panels = [g for g in groups if PRIMARY.get(g["workload"]) == g["metric"]
              and any(r["status"] != "unsupported" for r in g["rows"])]
    W, margin, gutter = 1240, 24, 28
    col_w = (W - 2 * margin - gutter) / 2
    label_w, value_w = 150, 78
    bar_h, bar_gap = 15, 6
    header_h = 144
    parts = []

    def text(x, y, s, size=12, anchor="start", weight="normal", fill="#222", style="normal", extra=""):
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                     f'font-weight="{weight}" font-style="{style}" fill="{fill}" {extra}>{esc(s)}</text>')

    # Layout panels into two columns, row by row.
    def panel_top(g):
        return 30 + (14 * len(reference_lines(g["workload"], g["metric"], groups)))

    def panel_height(g):
        n = sum(1 for r in g["rows"] if r["status"] != "unsupported")
        return panel_top(g) + n * (bar_h + bar_gap) + 48

    positions, y_cols = [], [header_h, header_h]
    for i, g in enumerate(panels):
        col = i % 2
        if col == 0 and i > 0:
            y_cols = [max(y_cols)] * 2
        positions.append((margin + col * (col_w + gutter), y_cols[col]))
        y_cols[col] += panel_height(g) + 22
    H = int(max(y_cols) + 16) if panels else header_h + 40

    # Header: title, subtitle, legend.
    title = "ampire vs MPIRE and multiprocessing, 2 workers" + ("  (QUICK smoke-test sizes)" if quick else "")
    text(margin, 32, title, size=21, weight="bold")
    text(margin, 54, subtitle, size=12, fill="#555")
    legend = [("ampire (Rust): fork, forkserver, spawn, threading", [("ampire", m) for m in METHOD_ORDER[:4]]),
              ("Rust baselines: rayon, tokio spawn_blocking", [("rayon", "-"), ("spawn_blocking", "-")]),
              ("MPIRE 2.10.2: same 4 methods", [("mpire", m) for m in METHOD_ORDER[:4]]),
              ("multiprocessing.Pool: fork, forkserver, spawn", [("multiprocessing", m) for m in METHOD_ORDER[:3]])]
    for k, (label, cells) in enumerate(legend):
        lx, ly = margin + (k % 2) * 420, 80 + (k // 2) * 20
        for j, c in enumerate(cells):
            parts.append(f'<rect x="{lx + 7 * j}" y="{ly - 10}" width="7" height="12" fill="{colour(*c)}"/>')
        text(lx + 7 * len(cells) + 6, ly, label, size=12)
    lx, ly = margin, 124
    parts.append(f'<path d="M{lx},{ly - 4}H{lx + 22}M{lx},{ly - 8}V{ly}M{lx + 22},{ly - 8}V{ly}" '
                 f'stroke="#222" stroke-width="1.2" fill="none"/>')
    text(lx + 28, ly, "min..max over runs; bar and label = median", size=12)
    lx += 28 + 6.2 * 42 + 22
    parts.append(f'<line x1="{lx}" y1="{ly - 12}" x2="{lx}" y2="{ly + 2}" stroke="#d62728" '
                 f'stroke-width="2" stroke-dasharray="4,3"/>')
    text(lx + 8, ly, "ideal for 2 workers (or project target)", size=12)
    lx += 8 + 6.2 * 39 + 22
    text(lx, ly, "n/a: failed or not built.  Log axes: bars start at the axis minimum.", size=12, fill="#555")

    for g, (px, py) in zip(panels, positions):
        rows = [r for r in g["rows"] if r["status"] != "unsupported"]
        unit, higher, axis_title = METRICS.get(g["metric"], (g["metric"], None, g["metric"]))
        refs = reference_lines(g["workload"], g["metric"], groups)
        bars_x = px + label_w
        bars_w = col_w - label_w - value_w
        vals = [r[k] for r in rows if r["status"] == "ok" for k in ("median", "min", "max")]
        sc = Scale(vals, [v for v, _ in refs], bars_w)
        ph = panel_height(g)
        parts.append(f'<rect x="{px - 8:.1f}" y="{py - 4:.1f}" width="{col_w + 16:.1f}" height="{ph:.1f}" '
                     f'fill="#fafafa" stroke="#dddddd" rx="4"/>')
        text(px, py + 14, titles.get(g["workload"], g["workload"]), size=14, weight="bold")
        top = py + panel_top(g)
        bottom = top + len(rows) * (bar_h + bar_gap)
        # grid + ticks
        for t in sc.ticks():
            x = bars_x + sc.x(t)
            parts.append(f'<line x1="{x:.1f}" y1="{top - 4:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                         f'stroke="#e3e3e3" stroke-width="1"/>')
            text(x, bottom + 14, fmt_tick(t), size=10.5, anchor="middle", fill="#444")
        parts.append(f'<line x1="{bars_x:.1f}" y1="{top - 4:.1f}" x2="{bars_x:.1f}" y2="{bottom:.1f}" '
                     f'stroke="#888" stroke-width="1"/>')
        better = "higher is better" if higher else ("lower is better" if higher is not None else "")
        axis = axis_title + (" (log scale)" if sc.log else "") + (f"  -  {better}" if better else "")
        text(bars_x + bars_w / 2, bottom + 31, axis, size=11.5, anchor="middle", fill="#333")
        # bars
        for i, r in enumerate(rows):
            y = top + i * (bar_h + bar_gap)
            label = IMPL_LABEL.get(r["impl"], r["impl"]) + ("" if r["method"] == "-" else f" {r['method']}")
            weight = "bold" if r["impl"] == "ampire" else "normal"
            text(bars_x - 6, y + bar_h - 3.5, label, size=11.5, anchor="end", weight=weight)
            if r["status"] != "ok":
                text(bars_x + 6, y + bar_h - 3.5, "n/a", size=11, style="italic", fill="#999")
                continue
            w = max(sc.x(r["median"]), 1.5)
            parts.append(f'<rect x="{bars_x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h}" '
                         f'fill="{colour(r["impl"], r["method"])}"><title>{esc(label)}: '
                         f'{esc(fmt(r["median"]))} {esc(unit)} (n={r["n"]})</title></rect>')
            x0, x1 = bars_x + sc.x(r["min"]), bars_x + sc.x(r["max"])
            ym = y + bar_h / 2
            if x1 - x0 >= 1.0:
                parts.append(f'<path d="M{x0:.1f},{ym:.1f}H{x1:.1f}M{x0:.1f},{ym - 4:.1f}V{ym + 4:.1f}'
                             f'M{x1:.1f},{ym - 4:.1f}V{ym + 4:.1f}" stroke="#111" stroke-width="1.1" fill="none"/>')
            vx = max(bars_x + w, x1) + 5
            text(vx, y + bar_h - 3.5, fmt_short(r["median"]), size=11, fill="#111",
                 extra='stroke="#fafafa" stroke-width="3" paint-order="stroke"')
        # reference lines, labelled above the bars
        for j, (v, lab) in enumerate(refs):
            x = bars_x + sc.x(v)
            parts.append(f'<line x1="{x:.1f}" y1="{top - 20 - 14 * j:.1f}" x2="{x:.1f}" y2="{bottom + 2:.1f}" '
                         f'stroke="#d62728" stroke-width="2" stroke-dasharray="5,4"/>')
            anchor = "end" if sc.x(v) > bars_w * 0.6 else "start"
            text(x + (-4 if anchor == "end" else 4), top - 10 - 14 * j, lab,
                 size=10.5, anchor=anchor, fill="#d62728")

    body = "\n".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="{FONT}">\n<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')


# ---------------------------------------------------------------------------
# BENCHMARKS.md
# ---------------------------------------------------------------------------

def markdown_report(raw, groups, titles, svg_name):
    meta = raw["meta"]
    m = meta["machine"]
    lines = [
        "# Benchmarks: ampire vs MPIRE and multiprocessing",
        "",
        "> Generated by `scripts/compare/run.py`; do not edit by hand. Re-run the command below to refresh.",
        "",
    ]
    if meta.get("quick"):
        lines += ["> **QUICK smoke-test run**: reduced sizes and repetitions, not a real measurement.", ""]
    lines += [
        f"- **Command:** `{meta['command']}`",
        f"- **Date:** {meta['date']}",
        f"- **Repetitions:** {meta['reps']} per cell, each a fresh process, interleaved "
        "round-robin over implementations; the table shows the median.",
        f"- **CPU:** {m['cpu']} ({m['nproc']} CPUs visible), **memory:** {m['memory']}, "
        f"**kernel:** {m['kernel']}",
        f"- **Rust:** {m['rustc']}",
        f"- **Python:** {m['python']}, MPIRE {m['mpire']}, numpy {m['numpy']}",
        "- **Workers:** 2 in every pool.",
        "",
        f"![Benchmark chart]({svg_name})",
        "",
        "## Against the targets",
        "",
        markdown_targets(groups),
        "",
        "## Results",
        "",
        "Ratio column: " + RATIO_HEADER + ".",
        "",
        markdown_table(groups),
        "",
        "## What each workload measures",
        "",
    ]
    notes = {
        "W1": "steady-state throughput: pool built and every worker warm before the clock starts; "
              "clock stops when the last result is back (shutdown excluded).",
        "W2": "as W1, one task per message (MPIRE `chunk_size=1`, `Pool.map(..., chunksize=1)`).",
        "W3": "fresh process: build the pool, one `apply`, graceful shutdown (MPIRE `stop_and_join`, "
              "`Pool.close()`+`join()`). Forkserver rows: `latency_ms` is a second pool in the same "
              "process with the fork server already running; `latency_cold_ms` is the first pool, "
              "including the fork-server start.",
        "W4": "a pure-Python (resp. Rust) busy loop calibrated to ~10 ms at start-up; speedup = "
              "serial time / pool time, pool warm (as W1).",
        "W5": "1 MiB `bytes` per task, task returns `len`; GB/s = payload bytes (10^9) moved to "
              "workers per second, pool warm. Every payload is a distinct object (pickle would "
              "otherwise de-duplicate repeated objects within a chunk).",
        "W6": "fork start method, object resident in the parent before the workers start; every "
              "worker reads the whole object, then the parent sums `Pss` from "
              "`/proc/<pid>/smaps_rollup` over the worker pids. PSS splits each shared page "
              "between the processes mapping it, so perfect sharing (parent + 2 workers) reads "
              "2/3 of the object (66.7%), one private copy per worker reads 200%. `uss_mib` "
              "(Private_Clean + Private_Dirty) is the memory that exists only because of the workers.",
        "F": "no pool: what this machine allows, which bounds the workloads above. A hand-off "
             "between threads or processes on two CPUs costs `wake_rtt_idle_us / 2` (a CPU with "
             "nothing to do halts, and waking it is slow on a VM), on one CPU "
             "`wake_rtt_same_cpu_us / 2`; W3 is a chain of a dozen such hand-offs (to the "
             "launcher, fork, hello, task, result, shutdown, exit, reaping) plus two forks. "
             "Results and shared objects moved into another process land in pages it never had: "
             "`fresh_write_gb_per_s` bounds that, against `warm_write_gb_per_s` for memory "
             "already mapped (thread workers hand results over without either).",
        "W7": "the shape of MPIRE's own benchmark suite (sybrenjansen/multiprocessing_benchmarks) "
              "scaled to 2 cores, without scipy/tensorflow: value = pool time / (serial time / 2), "
              "pool time end to end (pool start, work, results, shutdown); 1.0 is perfect. "
              "multiprocessing uses its best idiom (initializer state; a Barrier to collect "
              "per-worker state) rather than the original suite's per-task pickling and managers. "
              "Each implementation is held to its own serial time: the Rust tasks run several times "
              "faster than numpy's or Python's, so the same fixed cost of a pool (start, moving "
              "results, shutdown) weighs that much more in `ratio_to_ideal`; `pool_ms` compares "
              "the end-to-end times directly.",
    }
    for wl in ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "F"]:
        t = titles.get(wl) or titles.get("W7-numerical", wl)
        lines.append(f"- **{wl}** ({t.split('  ', 1)[-1] if wl != 'W7' else 'numerical, stateful, expensive init'}): {notes[wl]}")
    lines += ["", "Full definitions and the command-line contract: `scripts/compare/README.md`.", ""]
    problems = [c for c in raw["cells"] if c["status"] not in ("ok", "unsupported") or c.get("errors")]
    if problems:
        lines += ["## Cells without a result", ""]
        by_reason = {}
        for c in problems:
            why = c["errors"][-1] if c.get("errors") else c["status"]
            some = " (some repetitions)" if c["status"] == "ok" else ""
            name = f"{c['workload']} {IMPL_LABEL.get(c['impl'], c['impl'])} {c['method']}".replace(" -", "")
            by_reason.setdefault(why, []).append(name + some)
        for why, names in by_reason.items():
            lines.append(f"- {why}: " + ", ".join(names))
        lines.append("")
    return "\n".join(lines)
