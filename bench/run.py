"""``anns bench``: every system on one dataset in one run; JSON rows, a plot and a summary.

``run_bench`` builds and serves each selected system in fresh subprocesses (so each process's
memory is its own: see :mod:`bench.harness`), collects their rows (DESIGN.md section 6) into one
JSON list, draws recall@10 against batch and single-query QPS (PNG beside the JSON), and prints
a table of every row and a summary to stderr: per system, the best QPS at recall@10 >= 0.90 and
>= 0.95 with the serving RSS at that point, and anns's ratios to faiss-ivf-flat (and DiskANN).

Systems, in run order: ``anns`` (:mod:`bench.anns_peer`), ``faiss-ivf-flat``,
``faiss-ivfpq-opq``, ``faiss-ivf-ondisk`` (served warm, then cold) (:mod:`bench.faiss_peers`),
and ``diskann`` (only with ``diskann=True`` or when named in ``systems``): its own virtualenv
(:func:`bench.diskann_venv.ensure_venv`) runs ``bench/diskann_runner.py build`` and
``search`` (warm and ``--cold``), each printing JSON.

With ``adaptive=True`` (``anns bench --adaptive``) anns runs as several builds at once
(:func:`bench.variants.adaptive_variants`: float32 and sq8 references, rigid and adaptive OPQ at
equal bytes, OPQ of the full vector and of a prefix at half the bytes), and the run ends with
issue 3's summary (:mod:`bench.targets`), also written beside the JSON as ``.summary.md``.
Whenever anns is benchmarked, the device's random-read rate is measured first and (full runs)
again last (:mod:`bench.disk`, rows with system "disk": on a shared VM the rate moves with the
load).

Subprocesses run with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (see
:data:`OMP_WAIT_POLICY`); every row records the policy and the machine's load average. Timing
claims are ratios within one run: these machines are shared and noisy.

The scale run (1M synthetic vectors: memory against centroids) is ``python -m bench.synthetic``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anns.cli import to_json
from bench import anns_peer, disk, faiss_peers, harness, targets
from bench.targets import best_at, pareto
from bench.variants import AnnsVariant, adaptive_variants, tuned_sweep

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "bench" / "out"
DEFAULT_SYSTEMS = ("anns", "faiss-ivf-flat", "faiss-ivfpq-opq", "faiss-ivf-ondisk")
ALL_SYSTEMS = (*DEFAULT_SYSTEMS, "diskann")
TARGETS = (0.90, 0.95)
#: OpenMP idle threads sleep instead of spinning unless the caller's environment says
#: otherwise. This machine is shared (load averages of 5-20 on 2 cores): a spinning faiss
#: worker steals the core its partner needs, and on this box single faiss queries measured
#: 0.1 ms PASSIVE against 8-15 ms mean ACTIVE (faiss's default), batch QPS up to 1.8x better.
OMP_WAIT_POLICY = "PASSIVE"
#: A measuring subprocess still running after this long is killed (a hang, not a slow run).
CHILD_TIMEOUT_S = 2 * 3600
#: Search knobs shown in the table, in this order (whichever a row has).
SHOWN_KNOBS = ("max_postings", "eps2", "refine_factor", "nprobe", "k_factor", "complexity",
               "beam_width")


def run_bench(
    dataset: Path,
    out: Path | None = None,
    work: Path | None = None,
    diskann: bool = False,
    quick: bool = False,
    systems: list[str] | None = None,
    *,
    adaptive: bool = False,
    anns_configs: Sequence[dict[str, Any] | AnnsVariant] | None = None,
    block_cache_bytes: int = anns_peer.DEFAULT_BLOCK_CACHE,
    threads: int = 2,
) -> list[dict[str, Any]]:
    """Benchmark the selected systems on ``dataset``; returns the rows also written to ``out``.

    ``out``: JSON file (default ``bench/out/<dataset dir name>.json``; the PNG goes beside it).
    ``work``: where indexes are built (kept); default a temporary directory under
    ``bench/out/work`` removed at the end. ``systems``: a subset of :data:`ALL_SYSTEMS`
    (default all but diskann; ``diskann=True`` adds it). ``adaptive``: anns as the issue-3
    variants (overrides ``anns_configs``). ``anns_configs``: one anns build per item, an
    IndexConfig field dict or an :class:`AnnsVariant` (default one build with the library
    defaults); rows of several builds carry a ``variant`` label (a dict's is made of its
    fields). ``block_cache_bytes``: anns's RocksDB block
    cache while serving. ``threads``: OpenMP threads of faiss (anns's routing and scans, and
    the faiss peers).
    """
    dataset = Path(dataset).resolve()
    ds = harness.load_dataset(dataset)
    selected = _select(systems, diskann)
    name = dataset.name
    out = Path(out) if out else OUT_DIR / f"{name}.json"
    started = time.perf_counter()
    scratch: Path | None = None
    if work is None:
        (OUT_DIR / "work").mkdir(parents=True, exist_ok=True)
        scratch = work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=OUT_DIR / "work"))
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    n, d = ds.base().shape
    harness.log(f"dataset {name}: n={n} d={d} q={len(ds.queries)} metric={ds.metric}; "
                f"systems {', '.join(selected)}; work dir {work}")
    if adaptive:
        anns_configs, dims = adaptive_variants(ds.base(), ds.metric, quick)
        harness.log(f"variants: {', '.join(a.label for a in anns_configs)}; {dims}")

    rows: list[dict[str, Any]] = []
    durations: dict[str, float] = {}
    try:
        if "anns" in selected:
            t0 = time.perf_counter()
            rows.append({**disk.measure(work, seconds=2.0 if quick else 3.0), "when": "start"})
            durations["disk"] = time.perf_counter() - t0
        for system in selected:
            t0 = time.perf_counter()
            if system == "anns":
                rows += _run_anns(dataset, work, quick, anns_configs, block_cache_bytes, threads)
            elif system == "diskann":
                rows += _run_diskann(dataset, work, quick)
            else:
                rows += _run_faiss(system, dataset, work, n, quick, threads)
            durations[system] = time.perf_counter() - t0
            harness.log(f"{system} done in {durations[system]:.0f}s")
        if "anns" in selected and not quick:  # the device's rate moves with the machine's load
            t0 = time.perf_counter()
            rows.append({**disk.measure(work, seconds=3.0), "when": "end"})
            durations["disk"] += time.perf_counter() - t0
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    for row in rows:
        row["dataset"] = name

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(rows, indent=1) + "\n")
    png = out.with_suffix(".png")
    title = f"{name} (n={n}, d={d}, {len(ds.queries)} queries, {threads} threads)"
    measured = [r for r in rows if r["system"] != disk.SYSTEM]
    plotted = _plot(measured, png, title)
    sys.stderr.write(_table(measured) + "\n\n" + _summary(measured) + "\n\n")
    issue3 = targets.report(rows)
    if issue3:
        sys.stderr.write(issue3 + "\n")
        out.with_suffix(".summary.md").write_text(issue3 + "\n")
    times = ", ".join(f"{s} {t:.0f}s" for s, t in durations.items())
    sys.stderr.write(f"wall time: {time.perf_counter() - started:.0f}s ({times})\n")
    sys.stderr.write(f"rows: {out}\n" + (f"plot: {png}\n" if plotted else ""))
    return rows


def _select(systems: list[str] | None, diskann: bool) -> list[str]:
    chosen = list(systems) if systems else list(DEFAULT_SYSTEMS)
    if diskann and "diskann" not in chosen:
        chosen.append("diskann")
    unknown = [s for s in chosen if s not in ALL_SYSTEMS]
    if unknown:
        raise SystemExit(f"anns bench: unknown system(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(ALL_SYSTEMS)}")
    return [s for s in ALL_SYSTEMS if s in chosen]


# ------------------------------------------------------------------------------- subprocesses
def run_child(cmd: list[str]) -> list[dict[str, Any]]:
    """Run a measuring subprocess; its stderr streams through, its stdout JSON lines return.

    Native libraries print to stdout too (faiss: "resizing ..."), so lines that are not JSON
    objects are passed on to stderr rather than parsed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    harness.log("$ " + " ".join(cmd if len(" ".join(cmd)) < 300 else cmd[:6] + ["..."]))
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env,
                              check=False, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"anns bench: {' '.join(cmd[:4])} ... did not finish in "
                         f"{CHILD_TIMEOUT_S}s and was killed (hung?)") from e
    objects: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            objects.append(json.loads(line))
        elif line.strip():
            sys.stderr.write(line + "\n")
    if proc.returncode != 0:
        raise SystemExit(f"anns bench: {' '.join(cmd[:4])} ... exited with status "
                         f"{proc.returncode}")
    return objects


def merge_build(rows: list[dict[str, Any]], build: dict[str, Any]) -> list[dict[str, Any]]:
    """Fill the build figures of serving rows from the build subprocess's report."""
    for row in rows:
        row["params"] = {**build.get("params", {}), **row["params"]}
        row["build_s"] = build["build_s"]
        row["disk_bytes"] = build["disk_bytes"]
        row["build_peak_rss_mb"] = build.get("build_peak_rss_mb")
        row["build_peak_anon_mb"] = build.get("build_peak_anon_mb")
    return rows


def _as_variant(item: dict[str, Any] | AnnsVariant) -> AnnsVariant:
    if isinstance(item, AnnsVariant):
        return item
    label = ",".join(f"{k}={v}" for k, v in item.items()) or "default"
    return AnnsVariant(label, dict(item))


def _run_anns(
    dataset: Path, work: Path, quick: bool,
    configs: Sequence[dict[str, Any] | AnnsVariant] | None, block_cache: int, threads: int,
) -> list[dict[str, Any]]:
    variants = [_as_variant(c) for c in configs] if configs else [AnnsVariant("default", {})]
    labelled = len(variants) > 1
    rows: list[dict[str, Any]] = []
    py = [sys.executable, "-m", "bench.anns_peer"]
    for i, variant in enumerate(variants):
        index_dir = work / (f"anns-{i}" if labelled else "anns")
        common = ["--dataset", str(dataset), "--index-dir", str(index_dir),
                  "--threads", str(threads), "--block-cache-bytes", str(block_cache)]
        build_cmd = [*py, "build", *common, "--config", json.dumps(variant.config)]
        if variant.tune_recall is not None:
            build_cmd += ["--tune", str(variant.tune_recall)]
        t0 = time.perf_counter()
        (build,) = run_child(build_cmd)
        harness.log(f"anns build{f' [{variant.label}]' if labelled else ''}: "
                    f"{build['summary']} ({time.perf_counter() - t0:.0f}s with tuning)")
        sweep = list(variant.sweep) or anns_peer.default_sweep(quick)
        if "tune" in build:
            sweep = tuned_sweep(build["tune"]["params"]) + sweep
        serve = [*py, "serve", *common, "--sweep", json.dumps(sweep)]
        if labelled:
            serve += ["--variant", variant.label]
        served = merge_build(run_child(serve), build)
        for row in served:
            if "tune" in build:
                row["tune"] = build["tune"]
            row["build_prefix_energy"] = build.get("prefix_energy")
        rows += served
    return rows


def _run_faiss(
    system: str, dataset: Path, work: Path, n: int, quick: bool, threads: int
) -> list[dict[str, Any]]:
    index_dir = work / system
    py = [sys.executable, "-m", "bench.faiss_peers"]
    common = ["--dataset", str(dataset), "--index-dir", str(index_dir), "--threads", str(threads)]
    (build,) = run_child([*py, "build", system, *common])
    nlist = int(build["params"]["nlist"])
    sweep = faiss_peers.default_sweep(system, nlist, quick)
    rows = run_child([*py, "serve", system, *common, "--sweep", json.dumps(sweep)])
    if system == "faiss-ivf-ondisk":
        cold = faiss_peers.cold_sweep(nlist, quick)
        rows += run_child([*py, "serve", system, *common, "--sweep", json.dumps(cold), "--cold"])
    return merge_build(rows, build)


def _run_diskann(dataset: Path, work: Path, quick: bool) -> list[dict[str, Any]]:
    runner = REPO_ROOT / "bench" / "diskann_runner.py"
    try:
        from bench.diskann_venv import ensure_venv
    except ImportError as e:
        raise SystemExit(f"anns bench --diskann needs bench/diskann_venv.py ({e})") from e
    if not runner.is_file():
        raise SystemExit(f"anns bench --diskann needs {runner}, which is missing")
    python = str(ensure_venv(REPO_ROOT))
    index_dir = work / "diskann"
    if index_dir.exists():
        shutil.rmtree(index_dir)
    common = ["--dataset", str(dataset), "--index-dir", str(index_dir)]
    (build,) = run_child([python, str(runner), "build", *common])
    complexities = "10,20,40,80" if quick else "10,15,20,30,40,60,80,120,160"
    search = [python, str(runner), "search", *common, "--k", "10", "--complexities", complexities]
    rows = run_child(search) + run_child([*search, "--cold"])
    for row in rows:
        row.setdefault("cold", bool(row.get("params", {}).get("cold", False)))
    return merge_build(rows, build)


# ------------------------------------------------------------------------------- reporting
_series = targets.series


def _knobs(row: dict[str, Any]) -> str:
    p = row["params"]
    return " ".join(f"{k}={p[k]:g}" if isinstance(p[k], float) else f"{k}={p[k]}"
                    for k in SHOWN_KNOBS if k in p)


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec``; "-" (right-aligned to the spec's width) when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 0))
    return format(value, spec)


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'series':<24} {'knobs':<34} {'r@1':>6} {'r@10':>6} {'qps_b':>8} {'qps_s':>7} "
            f"{'p50ms':>7} {'p99ms':>7} {'rss_mb':>7} {'read/q':>9} {'build_s':>7} {'disk_mb':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{_series(r):<24.24} {_knobs(r):<34.34} {r['recall@1']:>6.3f} {r['recall@10']:>6.3f} "
            f"{_fmt(r['qps_batch'], '8.0f')} {_fmt(r['qps_single'], '7.0f')} "
            f"{_fmt(r['p50_ms'], '7.2f')} {_fmt(r['p99_ms'], '7.2f')} "
            f"{_fmt(r['rss_serving_mb'], '7.1f')} {_fmt(r['bytes_read_per_query'], '9.0f')} "
            f"{_fmt(r['build_s'], '7.1f')} {_fmt((r['disk_bytes'] or 0) / harness.MB, '7.1f')}"
        )
    return "\n".join(lines)


def _summary(rows: list[dict[str, Any]]) -> str:
    by_series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_series.setdefault(_series(r), []).append(r)
    head = f"{'series':<24} {'target':>6} {'qps_batch':>10} {'rss_mb':>7} {'qps_single':>10} {'p50ms':>7}"
    lines = ["best QPS at a recall@10 target (rss_mb at the best-batch point):", head,
             "-" * len(head)]
    best: dict[tuple[str, float], tuple[dict[str, Any] | None, dict[str, Any] | None]] = {}
    for series, group in by_series.items():
        for target in TARGETS:
            b, s = best_at(group, target, "qps_batch"), best_at(group, target, "qps_single")
            best[(series, target)] = (b, s)
            lines.append(
                f"{series:<24.24} {target:>6.2f} {_fmt(b and b['qps_batch'], '10.0f')} "
                f"{_fmt(b and b['rss_serving_mb'], '7.1f')} "
                f"{_fmt(s and s['qps_single'], '10.0f')} {_fmt(s and s['p50_ms'], '7.2f')}"
            )
    refs = [s for s in ("faiss-ivf-flat", "diskann", "diskann cold", "faiss-ivf-ondisk cold")
            if s in by_series]
    for series in (s for s in by_series if s.startswith("anns")):
        for ref in refs:
            lines.append(f"\n{series} / {ref}:")
            for target in TARGETS:
                (ab, as_), (rb, rs) = best[(series, target)], best[(ref, target)]
                lines.append(
                    f"  recall@10>={target:.2f}: qps_batch x{_ratio(ab, rb, 'qps_batch')}, "
                    f"qps_single x{_ratio(as_, rs, 'qps_single')}, "
                    f"rss_serving x{_ratio(ab, rb, 'rss_serving_mb')}"
                )
    return "\n".join(lines)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> str:
    if not a or not b or not b.get(key) or a.get(key) is None:
        return "-"
    return f"{a[key] / b[key]:.2f}"


def _plot(rows: list[dict[str, Any]], png: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        harness.log("matplotlib is missing (pip install -e '.[bench]'): no plot drawn")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    series = sorted({_series(r) for r in rows}, key=lambda s: (not s.startswith("anns"), s))
    colors = plt.get_cmap("tab20")
    for ax, key, label in ((axes[0], "qps_batch", "batch QPS (all queries in one call)"),
                           (axes[1], "qps_single", "single-query QPS (one query per call)")):
        for i, s in enumerate(series):
            pts = [(r["recall@10"], r[key]) for r in rows if _series(r) == s and r.get(key)]
            if not pts:
                continue
            c = colors((2 * i) % 20 + (2 * i // 20) % 2)  # the dark shades first, then light
            ax.scatter(*zip(*pts), color=c, s=10, alpha=0.35)
            front = pareto(pts)
            ax.plot(*zip(*front), marker="o", ms=4, color=c, label=s,
                    linestyle="--" if s.endswith("cold") else "-")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
