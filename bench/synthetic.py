"""Scale run: does anns's serving memory grow with its centroids rather than its vectors?

``python -m bench.synthetic [--n 1000000] [--subset 250000] [--dim 128] [--queries 1000]
[--work DIR] [--out FILE.json] [--config JSON] [--quick]``

1. Writes (once; reused while its parameters match) a clustered, seeded dataset of ``n`` x
   ``dim`` float32 vectors in the DESIGN.md layout under ``WORK/clustered-<n>``, plus a dataset
   of its first ``subset`` rows under ``WORK/clustered-<subset>``. The base is written chunk by
   chunk into ``np.lib.format.open_memmap``, so generating never holds the whole matrix twice.
   Each chunk of ``CHUNK_ROWS`` rows is one call of :func:`anns.evaluation.clustered_data` with
   its own seed and its share of the clusters (sqrt(n)/2 in all, as clustered_data's default),
   so the whole set is one Gaussian mixture whose centres are all i.i.d., as in a single call.
   Queries are drawn from the same chunks' mixtures (each dataset's from its own rows' chunks);
   exact ground truth comes from faiss flat search over base chunks
   (``faiss.contrib.exhaustive_search.knn_ground_truth``).
2. For each size, builds anns in one subprocess and serves it in another
   (:mod:`bench.anns_peer`: direct reads, 8 MiB block cache), at the default search settings
   and a few others.
3. Writes the rows to ``--out`` (default ``bench/out/synthetic.json``) and prints, per size:
   build time, build peak RSS (VmHWM, which includes the memory-mapped input's pages, and the
   sampled anonymous peak) against the raw data size, the number of centroids, the RSS of the
   serving process, recall@10 and QPS, and the growth factors between the two sizes.

``--quick`` uses n=200k and subset=50k (a few minutes instead of tens).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from anns.evaluation import clustered_data
from bench import harness
from bench.run import OUT_DIR, merge_build, run_child

#: Rows generated per clustered_data call (and per ground-truth block).
CHUNK_ROWS = 50_000
GT_K = 100
SWEEP = [{}, {"max_postings": 16}, {"max_postings": 64}]


def _params(n: int, dim: int, queries: int, seed: int) -> dict[str, Any]:
    return {"n": n, "dim": dim, "queries": queries, "seed": seed, "chunk_rows": CHUNK_ROWS}


def _is_current(path: Path, params: dict[str, Any]) -> bool:
    meta = path / "meta.json"
    if not meta.is_file() or not (path / "gt.npy").is_file():
        return False
    return bool(json.loads(meta.read_text()).get("generator") == params)


def _write_meta(path: Path, params: dict[str, Any]) -> None:
    meta = {"name": path.name, "metric": "l2", "n": params["n"], "d": params["dim"],
            "q": params["queries"], "source": "bench.synthetic (anns.evaluation.clustered_data)",
            "generator": params}
    (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _ground_truth(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    blocks = (np.ascontiguousarray(base[s : s + CHUNK_ROWS]) for s in range(0, len(base),
                                                                             CHUNK_ROWS))
    _, ids = knn_ground_truth(queries, blocks, GT_K)  # type: ignore[no-untyped-call]
    gt: np.ndarray = ids.astype(np.int32)
    return gt


def generate(work: Path, n: int, subset: int, dim: int, queries: int, seed: int
             ) -> tuple[Path, Path]:
    """Write (or reuse) the full and subset dataset directories; returns their paths."""
    if n % CHUNK_ROWS or subset % CHUNK_ROWS or not 0 < subset < n:
        raise SystemExit(f"--n {n} and --subset {subset} must be multiples of {CHUNK_ROWS} "
                         f"with 0 < subset < n")
    full, part = work / f"clustered-{n}", work / f"clustered-{subset}"
    full_params, part_params = _params(n, dim, queries, seed), _params(subset, dim, queries, seed)
    part_params["subset_of"] = full.name
    if _is_current(full, full_params) and _is_current(part, part_params):
        harness.log(f"reusing {full} and {part}")
        return full, part

    chunks = n // CHUNK_ROWS
    clusters = max(2, round(math.sqrt(n) / 2 / chunks))  # per chunk; sqrt(n)/2 overall
    # enough queries per chunk that the subset's own chunks supply all of its queries
    per_chunk = math.ceil(queries * CHUNK_ROWS / subset)
    full.mkdir(parents=True, exist_ok=True)
    base = np.lib.format.open_memmap(full / "base.npy", mode="w+", dtype=np.float32,
                                     shape=(n, dim))
    pool = np.empty((chunks, per_chunk, dim), dtype=np.float32)
    t0 = time.perf_counter()
    for i in range(chunks):
        x, q = clustered_data(CHUNK_ROWS, dim, clusters=clusters, queries=per_chunk,
                              seed=seed * 100_003 + i)
        base[i * CHUNK_ROWS : (i + 1) * CHUNK_ROWS] = x
        pool[i] = q
    base.flush()
    harness.log(f"generated {n} x {dim} in {time.perf_counter() - t0:.0f}s "
                f"({chunks} chunks of {clusters} clusters)")
    rng = np.random.default_rng(seed)
    part_chunks = subset // CHUNK_ROWS

    def pick(k: int) -> np.ndarray:
        flat = pool[:k].reshape(-1, dim)
        return np.ascontiguousarray(flat[np.sort(rng.choice(len(flat), queries, replace=False))])

    for path, rows, qs, params in ((full, n, pick(chunks), full_params),
                                   (part, subset, pick(part_chunks), part_params)):
        path.mkdir(parents=True, exist_ok=True)
        if path is part:
            sub = np.lib.format.open_memmap(part / "base.npy", mode="w+", dtype=np.float32,
                                            shape=(subset, dim))
            for s in range(0, subset, CHUNK_ROWS):
                sub[s : s + CHUNK_ROWS] = base[s : s + CHUNK_ROWS]
            sub.flush()
            del sub
        t0 = time.perf_counter()
        np.save(path / "query.npy", qs)
        np.save(path / "gt.npy", _ground_truth(np.load(path / "base.npy", mmap_mode="r"), qs))
        _write_meta(path, params)
        harness.log(f"{path.name}: ground truth for {rows} rows in "
                    f"{time.perf_counter() - t0:.0f}s")
    del base
    return full, part


def measure_size(dataset: Path, work: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Build and serve anns on one dataset; rows with build figures filled in."""
    index_dir = work / f"anns-{dataset.name}"
    py = [sys.executable, "-m", "bench.anns_peer"]
    common = ["--dataset", str(dataset), "--index-dir", str(index_dir)]
    (build,) = run_child([*py, "build", *common, "--config", json.dumps(config)])
    harness.log(f"{dataset.name} build: {build['summary']}")
    rows = run_child([*py, "serve", *common, "--sweep", json.dumps(SWEEP)])
    n, dim = np.load(dataset / "base.npy", mmap_mode="r").shape
    for row in merge_build(rows, build):
        row.update(dataset=dataset.name, n=n, raw_mb=round(n * dim * 4 / harness.MB, 1),
                   centroid_mb=round(row["centroids"] * dim * 4 / harness.MB, 2),
                   build_summary=build["summary"])
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """The table: one line per size at the default search settings, then growth factors."""
    picked = [r for r in rows if r.get("knobs_set") == {}]
    head = (f"{'dataset':<18} {'n':>8} {'raw_mb':>7} {'centroids':>9} {'cent_mb':>7} {'build_s':>8} "
            f"{'build_peak_mb':>13} {'build_anon_mb':>13} {'peak/raw':>8} "
            f"{'rss_serving_mb':>14} {'rss/raw':>7} "
            f"{'r@10':>6} {'qps_b':>7} {'qps_s':>6} {'disk_mb':>8}")
    lines = ["anns at default search settings:", head, "-" * len(head)]
    for r in picked:
        lines.append(
            f"{r['dataset']:<18} {r['n']:>8} {r['raw_mb']:>7.0f} {r['centroids']:>9} "
            f"{r['centroid_mb']:>7.1f} "
            f"{r['build_s']:>8.1f} {r['build_peak_rss_mb']:>13.0f} {r['build_peak_anon_mb']:>13.0f} "
            f"{r['build_peak_rss_mb'] / r['raw_mb']:>8.2f} {r['rss_serving_mb']:>14.1f} "
            f"{r['rss_serving_mb'] / r['raw_mb']:>7.3f} {r['recall@10']:>6.3f} "
            f"{r['qps_batch']:>7.0f} {r['qps_single']:>6.0f} {r['disk_bytes'] / harness.MB:>8.0f}"
        )
    if len(picked) == 2:
        small, big = sorted(picked, key=lambda r: r["n"])
        lines.append(
            f"growth {small['dataset']} -> {big['dataset']}: vectors x{big['n'] / small['n']:.2f},"
            f" centroids x{big['centroids'] / small['centroids']:.2f}, serving RSS "
            f"x{big['rss_serving_mb'] / max(small['rss_serving_mb'], 1e-9):.2f}, build peak RSS "
            f"x{big['build_peak_rss_mb'] / small['build_peak_rss_mb']:.2f} (anonymous "
            f"x{big['build_peak_anon_mb'] / max(small['build_peak_anon_mb'], 1e-9):.2f}), "
            f"build time x{big['build_s'] / small['build_s']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=None, help="rows of the full set (1,000,000)")
    parser.add_argument("--subset", type=int, default=None, help="rows of the subset (250,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=OUT_DIR / "work" / "synthetic")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "synthetic.json")
    parser.add_argument("--config", default="{}", help="JSON object of IndexConfig fields")
    parser.add_argument("--quick", action="store_true", help="n=200k, subset=50k")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    n = args.n or (200_000 if args.quick else 1_000_000)
    subset = args.subset or (50_000 if args.quick else 250_000)
    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    work = args.work.resolve()
    full, part = generate(work, n, subset, args.dim, args.queries, args.seed)
    rows: list[dict[str, Any]] = []
    for dataset in (part, full):
        t0 = time.perf_counter()
        rows += measure_size(dataset, work, json.loads(args.config))
        harness.log(f"{dataset.name} measured in {time.perf_counter() - t0:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    sys.stderr.write("\n" + report(rows) + "\n")
    sys.stderr.write(f"wall time {time.perf_counter() - started:.0f}s; rows: {args.out}\n")


if __name__ == "__main__":
    main()
