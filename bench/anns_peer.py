"""The anns system in the benchmark: bulk build in one subprocess, serve in another.

Serving opens the collection read-only with ``StorageConfig(direct_reads=True,
block_cache_bytes=...)`` (default: the library's default cache size): posting and vector reads
bypass the OS page cache (O_DIRECT), so the
serving process's RSS (centroids, their index, the codec, the bounded RocksDB block cache) is
the whole memory cost, and ``bytes_read_per_query`` counts real device reads.

Two subprocesses of :mod:`bench.run`, speaking JSON lines on stdout::

    python -m bench.anns_peer build --dataset D --index-dir I [--config JSON] \\
        [--tune RECALL [--block-cache-bytes N]]
    python -m bench.anns_peer serve --dataset D --index-dir I --sweep JSON \\
        [--block-cache-bytes N] [--variant NAME]

``--config`` is a JSON object of IndexConfig fields (posting_size, max_posting_size, eps1,
replica_cap, codec, pq_m, d_route, d_scan, ...); the metric comes from the dataset.
``--tune`` tunes the built collection for a recall@10 target (:meth:`anns.Collection.tune`,
batch objective, on held-out vectors of the base, not the benchmark queries) under the
serving storage settings, stores the profile with it and reports it (``tune`` in the build
JSON). ``--sweep`` is a JSON list of SearchParams fields (max_postings, eps2, refine_factor,
d_route, d_rerank, ...).

Each row's ``params`` holds the index knobs the collection was built with, the search knobs
of the point and the stage dims the search used (``d_route``, ``d_scan``, ``d_rerank``;
``d_route_index``: the dims the centroids are stored at); ``bytes_per_vector`` is the code
bytes of one stored vector in a posting (the id beside it adds 8); ``tuned`` marks the point
equal to the collection's tuned profile. ``profile`` holds the batch pass's mean seconds per
query in each search stage (route, fetch, scan, rerank) and ``python``: the rest of the call
(validation, chunking, result assembly); ``profile_single`` the same for the single-query
pass.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import anns
from anns.config import SearchParams, validated
from anns.vectors import integer_dtype
from bench import harness
from bench.harness import Dataset

SYSTEM = "anns"
#: IndexConfig knobs reported in every row's params (the ones a build sweep varies).
INDEX_KNOBS = ("posting_size", "max_posting_size", "eps1", "replica_cap", "codec", "pq_m",
               "matryoshka", "vector_dtype")
#: The library's own default (StorageConfig.block_cache_bytes), so the benchmark follows it.
DEFAULT_BLOCK_CACHE = anns.StorageConfig().block_cache_bytes


def default_sweep(quick: bool) -> list[dict[str, Any]]:
    """Search settings: a ``max_postings`` (nprobe cap) ladder at the library's default eps2,
    plus (full runs) two caps at a harder and a looser eps2 pruning ratio. Other knobs stay at
    their defaults (the rows record them)."""
    eps2 = SearchParams().eps2
    if quick:
        return harness.grid(max_postings=[8, 32, 128], eps2=[eps2])
    side = [e for e in (0.3, 1.5) if e != eps2]
    return (harness.grid(max_postings=[4, 8, 16, 32, 64, 128], eps2=[eps2])
            + harness.grid(max_postings=[16, 64], eps2=side))


def build(
    ds: Dataset, index_dir: Path, config: dict[str, Any], tune_recall: float | None = None,
    block_cache: int = DEFAULT_BLOCK_CACHE,
) -> dict[str, Any]:
    """Bulk-build the dataset's base into ``index_dir`` (replaced if present); with
    ``tune_recall``, then tune it (see the module docstring)."""
    if index_dir.exists():
        shutil.rmtree(index_dir)
    # integer l2 data is stored as such, as DiskANN indexes it in the same run (diskannpy
    # takes integer vectors for l2 only)
    dtype = integer_dtype(ds.base(), ds.queries) if ds.metric == "l2" else "float32"
    config = {"vector_dtype": dtype, **config, "metric": ds.metric}
    t0 = time.perf_counter()
    summary, anon_mb = harness.anon_peak(lambda: anns.build(
        index_dir, ds.path / "base.npy", config=config))
    wall = time.perf_counter() - t0
    # the summary's peak_rss_mb is ru_maxrss, which counts the parent's RSS at fork: use VmHWM
    peak = harness.peak_rss_mb()
    with anns.Collection.open(index_dir, anns.StorageConfig(read_only=True)) as coll:
        info = coll.info()
    report: dict[str, Any] = {
        "build_s": summary.build_seconds,
        "build_peak_rss_mb": round(peak, 1),
        "build_peak_anon_mb": round(anon_mb, 1),
        "disk_bytes": summary.disk_bytes,
        "params": index_knobs(info),
        "build_wall_s": round(wall, 3),
        "summary": json.loads(summary.to_json()),
        "prefix_energy": info["prefix_energy"],
        "basis": info["basis"],
    }
    if tune_recall is not None:
        report["tune"] = tune(index_dir, tune_recall, block_cache)
    return report


def index_knobs(info: dict[str, Any]) -> dict[str, Any]:
    """The build knobs a row reports, from :meth:`anns.Collection.info`."""
    knobs = {name: info["config"][name] for name in INDEX_KNOBS}
    if knobs["codec"] != "opq":
        del knobs["pq_m"]
    dims = info["stage_dims"]
    knobs.update(d_route_index=dims["d_route"], d_scan=dims["d_scan"],
                 d_rerank_index=dims["d_rerank"])
    return knobs


def tune(index_dir: Path, recall: float, block_cache: int) -> dict[str, Any]:
    """Tune the collection for recall@10 ``recall`` under the serving storage settings (direct
    reads, the same block cache) and store the profile; returns the profile and the cost."""
    storage = anns.StorageConfig(direct_reads=True, block_cache_bytes=block_cache)
    t0 = time.perf_counter()
    with anns.Collection.open(index_dir, storage) as coll:
        report = coll.tune(recall, k=10, objective="batch")
    wall = time.perf_counter() - t0
    profile = report.profile
    harness.log(f"anns tune {recall}: {profile.params} (recall {profile.recall:.4f} on "
                f"{profile.queries} held-out vectors, {profile.qps:.0f} qps) in {wall:.0f}s, "
                f"{len(report.curve)} points measured")
    return {
        "target_recall": recall,
        "params": profile.params,
        "recall": profile.recall,
        "qps": profile.qps,
        "queries": profile.queries,
        "points_measured": len(report.curve),
        "truth_s": round(report.truth_seconds, 3),
        "tune_s": round(wall, 3),
    }


def _profile(stats: anns.SearchStats, seconds: float) -> dict[str, float]:
    """Mean seconds per query of each stage, and of everything else (``python``)."""
    q = max(stats.queries, 1)
    stages = {name: stats.seconds.get(name, 0.0) for name in ("route", "fetch", "scan", "rerank")}
    profile = {name: round(s / q, 7) for name, s in stages.items()}
    profile["python"] = round(max(seconds - sum(stages.values()), 0.0) / q, 7)
    return profile


def serve(
    ds: Dataset, index_dir: Path, sweep: list[dict[str, Any]], block_cache: int,
    variant: str | None, repeats: int,
) -> None:
    """Open the collection in this process and emit one row per sweep point."""
    queries = ds.queries
    baseline, baseline_anon = harness.rss_bytes(), harness.rss_anon_bytes()
    storage = anns.StorageConfig(direct_reads=True, block_cache_bytes=block_cache, read_only=True)
    t0 = time.perf_counter()
    coll = anns.Collection.open(index_dir, storage)
    load_s = time.perf_counter() - t0
    info = coll.info()
    knobs = index_knobs(info)
    tuned = [p["params"] for p in coll.profiles().values()]
    harness.log(f"anns: opened {info['count']} vectors, {info['postings']} postings "
                f"({info['centroid_index']}) in {load_s:.2f}s")
    try:
        for point in sweep:
            params = validated(SearchParams, **point)

            def batch(x: np.ndarray, params: SearchParams = params) -> tuple[np.ndarray, Any]:
                t = time.perf_counter()
                result = coll.search(x, 10, params, return_stats=True)
                return result.ids, (result.stats, time.perf_counter() - t)

            calls: list[tuple[anns.SearchStats, float]] = []

            def single(x: np.ndarray, params: SearchParams = params) -> np.ndarray:
                t = time.perf_counter()
                result = coll.search(x, 10, params, return_stats=True)
                calls.append((result.stats, time.perf_counter() - t))
                return result.ids

            m = harness.measure(batch, single, queries, ds.gt, repeats=repeats)
            stats, seconds = m.batch_info
            q = max(stats.queries, 1)
            timed = calls[-m.single_queries:]  # the single-query pass, without the warm-up
            single_stats = sum((c[0] for c in timed), anns.SearchStats())
            searched = params.model_dump()
            searched["d_route"] = params.d_route or knobs["d_route_index"]
            searched["d_rerank"] = params.d_rerank or knobs["d_rerank_index"]
            row_params = {**knobs, **searched, "block_cache_bytes": block_cache,
                          "direct_reads": True}
            extra: dict[str, Any] = {
                "cold": False,
                "bytes_per_vector": info["code_size"],
                "tuned": any(_same_knobs(point, p) for p in tuned),
                "knobs_set": point,  # what the sweep set; params holds the resolved values
                "centroids": info["postings"],
                "centroid_index": info["centroid_index"],
                "load_s": round(load_s, 3),
                "profile": _profile(stats, seconds),
                "profile_single": _profile(single_stats, sum(c[1] for c in timed)),
                "postings_probed_per_query": round(stats.postings_probed / q, 2),
                "candidates_per_query": round(stats.candidates_scored / q, 1),
                "reranked_per_query": round(stats.reranked / q, 1),
                "logical_bytes_read_per_query": round(stats.bytes_read / q, 1),
                "postings_fetched_per_query": round(stats.postings_fetched / q, 2),
            }
            if variant:
                extra["variant"] = variant
            harness.emit(harness.make_row(SYSTEM, row_params, m, baseline, baseline_anon,
                                          read_calls=True, **extra))
            harness.log(f"anns {point}: recall@10 {m.recall10:.4f} batch {m.qps_batch:.0f} qps, "
                        f"single {m.qps_single:.0f} qps, "
                        f"{stats.postings_probed / q:.1f} postings/query")
    finally:
        coll.close()


def _same_knobs(point: dict[str, Any], profile: dict[str, Any]) -> bool:
    """Whether a sweep point sets exactly a tuned profile's knobs."""
    return validated(SearchParams, **point) == validated(SearchParams, **profile)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.anns_peer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--dataset", type=Path, required=True)
        p.add_argument("--index-dir", type=Path, required=True)
        p.add_argument("--threads", type=int, default=2, help="OpenMP threads of faiss")
        p.add_argument("--block-cache-bytes", type=int, default=DEFAULT_BLOCK_CACHE)
        if name == "build":
            p.add_argument("--config", default="{}", help="JSON object of IndexConfig fields")
            p.add_argument("--tune", type=float, default=None,
                           help="tune the built collection for this recall@10")
        else:
            p.add_argument("--sweep", required=True, help="JSON list of SearchParams objects")
            p.add_argument("--variant", default=None, help="label of this build in the rows")
            p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    ds = harness.load_dataset(args.dataset)
    if args.command == "build":
        config = json.loads(args.config)
        if not isinstance(config, dict):
            raise SystemExit(f"--config must be a JSON object, got {args.config!r}")
        harness.emit(build(ds, args.index_dir, config, args.tune, args.block_cache_bytes))
    else:
        serve(ds, args.index_dir, harness.parse_sweep(args.sweep), args.block_cache_bytes,
              args.variant, args.repeats)


if __name__ == "__main__":
    main()
