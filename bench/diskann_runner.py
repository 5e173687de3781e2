"""DiskANN benchmark peer: build and search a diskannpy disk index.

This script runs under the python of the dedicated DiskANN virtualenv (see
``bench/diskann_venv.py``), so it imports only the standard library, numpy and
diskannpy -- never ``anns``, faiss or anything else from the repository.

Usage::

    python diskann_runner.py build --dataset DIR --index-dir DIR \
        [--graph-degree R] [--complexity L] [--pq-fraction 0.125] [--threads N]
    python diskann_runner.py search --dataset DIR --index-dir DIR --k 10 \
        --complexities 20,30,50 [--beam-width W] [--cold] [--cache-nodes N]

The dataset directory holds ``base.npy`` (float32 [n, d]), ``query.npy``
(float32 [q, d]), ``gt.npy`` (int32 [q, >=10]) and ``meta.json`` whose ``metric``
is ``"l2"``, ``"ip"`` or ``"cosine"``.  DiskANN's disk index has no cosine
support, so cosine data is L2-normalised and indexed with L2 (same ranking);
``ip`` maps to DiskANN's ``mips``. Integer l2 data (every base and query value an integer in
uint8's or int8's range, as Fashion-MNIST's pixels) is indexed as that type, as DiskANN users
would index it and as anns stores it (``vector_dtype``); anything else as float32 (diskannpy
takes integer vectors for l2 only).

Output contract: ``build`` prints one JSON object on stdout; ``search`` prints one
JSON row per complexity (benchmark row schema, DESIGN.md section 6), one per line.
Nothing else goes to stdout: file descriptor 1 is redirected to stderr at start-up
so that DiskANN's C++ logging (``std::cout``) lands in stderr too.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import diskannpy
import numpy as np
import numpy.typing as npt

SYSTEM = "diskann"
INDEX_PREFIX = "ann"
PARAMS_FILE = "anns_runner_params.json"
"""Sidecar written by ``build`` (our bookkeeping, not counted in ``disk_bytes``)."""

SEARCH_THREADS = 2
"""Threads for StaticDiskIndex and for ``batch_search``."""

_T = TypeVar("_T")
FloatArray = npt.NDArray[np.float32]
AnyArray = npt.NDArray[Any]


# --------------------------------------------------------------------------- I/O


def _log(msg: str) -> None:
    """Write one log line to stderr."""
    sys.stderr.write(f"[diskann-runner] {msg}\n")
    sys.stderr.flush()


def _claim_stdout() -> TextIO:
    """Return a private handle on the real stdout and point fd 1 at stderr.

    Anything that later writes to fd 1 (DiskANN's C++ ``std::cout``, a stray
    ``print``) ends up on stderr; only what is written to the returned stream
    reaches the caller's stdout.
    """
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _emit(out: TextIO, obj: dict[str, Any]) -> None:
    """Write ``obj`` as one JSON line to ``out``."""
    out.write(json.dumps(obj) + "\n")
    out.flush()


# ----------------------------------------------------------------- measurements


def _vm_rss_bytes() -> int:
    """Current resident set size of this process (VmRSS), in bytes."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _read_bytes() -> int:
    """Bytes this process caused to be fetched from storage (``read_bytes``)."""
    with open("/proc/self/io", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("read_bytes not found in /proc/self/io")


def _peak_rss_mb() -> float:
    """Peak RSS of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _dir_bytes(directory: Path, exclude: frozenset[str] = frozenset({PARAMS_FILE})) -> int:
    """Total size of the regular files under ``directory`` (recursively)."""
    return sum(
        p.stat().st_size for p in directory.rglob("*") if p.is_file() and p.name not in exclude
    )


def _drop_page_cache(directory: Path) -> None:
    """Evict every file under ``directory`` from the page cache.

    Dirty pages cannot be dropped, so each file is flushed first.
    """
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed(fn: Callable[[], _T]) -> tuple[_T, float]:
    """Call ``fn`` and return (result, elapsed seconds)."""
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


# ---------------------------------------------------------------------- dataset


def _load_meta(dataset: Path) -> dict[str, Any]:
    """Read ``meta.json`` of a dataset directory."""
    with open(dataset / "meta.json", encoding="utf-8") as fh:
        meta: dict[str, Any] = json.load(fh)
    if meta.get("metric") not in ("l2", "ip", "cosine"):
        raise ValueError(f"unsupported metric in meta.json: {meta.get('metric')!r}")
    return meta


def _diskann_metric(metric: str) -> str:
    """Map our metric name to the one DiskANN's disk index is built with."""
    return {"l2": "l2", "ip": "mips", "cosine": "l2"}[metric]


def _prepare(vectors: AnyArray, metric: str) -> FloatArray:
    """Return C-contiguous float32 vectors, L2-normalised for cosine."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, np.finfo(np.float32).tiny)
    return x


def _integer_dtype(*arrays: AnyArray) -> Any:
    """np.uint8 or np.int8 when every value of ``arrays`` is an integer in its range, else
    np.float32 (checked a block of rows at a time): the rule of ``anns.vectors.integer_dtype``,
    which this script cannot import."""
    low, high = np.inf, -np.inf
    for x in arrays:
        for s in range(0, len(x), 4096):
            block = np.asarray(x[s : s + 4096], dtype=np.float32)
            if block.size and not (block == np.rint(block)).all():
                return np.float32
            if block.size:
                low, high = min(low, float(block.min())), max(high, float(block.max()))
    for dtype in (np.uint8, np.int8):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return dtype
    return np.float32


def _recalls(ids: AnyArray, gt: AnyArray) -> tuple[float, float]:
    """(recall@1, recall@10) of result ids ``[q, >=10]`` against ground truth."""
    top = ids[:, :10].astype(np.int64)
    true = gt[:, :10].astype(np.int64)
    r1 = float(np.mean(top[:, 0] == true[:, 0]))
    # Ground-truth ids are distinct: |top10 & gt10| = how many gt10 ids occur in top10.
    hits = int((true[:, :, None] == top[:, None, :]).any(axis=2).sum())
    return r1, hits / (10.0 * len(gt))


# ------------------------------------------------------------------------ build

_GIB = float(1 << 30)
# DiskANN (disk_utils.cpp get_memory_budget): a budget B with B - 0.25 > 1.0 GiB is
# reduced by 0.25 GiB (room for cached nodes) before sizing the PQ codes.
_CACHE_SLACK_GIB = 0.25
_CACHE_THRESHOLD_GIB = 1.0
_MAX_PQ_CHUNKS = 512


def _bytes_per_vector(budget_gib: float, n: int) -> float:
    """Unfloored PQ bytes per vector DiskANN derives from ``search_memory_maximum``.

    Mirrors ``get_memory_budget`` + ``calculate_num_pq_chunks`` in DiskANN's
    disk_utils.cpp; diskannpy passes the budget through ``std::to_string``
    (6 decimals), which is modelled too.
    """
    b = float(f"{budget_gib:.6f}")
    if b - _CACHE_SLACK_GIB > _CACHE_THRESHOLD_GIB:
        b -= _CACHE_SLACK_GIB
    return b * _GIB / n


def _pq_bytes_for_budget(budget_gib: float, n: int, d: int) -> int:
    """PQ bytes per vector (= PQ chunks) DiskANN uses for this budget."""
    return max(1, min(int(_bytes_per_vector(budget_gib, n)), d, _MAX_PQ_CHUNKS))


def search_memory_budget_gib(n: int, d: int, pq_fraction: float) -> tuple[float, int]:
    """Choose ``search_memory_maximum`` (GiB) so the in-RAM PQ codes are
    about ``pq_fraction`` of the raw float32 vectors (``n * d * 4`` bytes).

    DiskANN sizes its PQ codes as ``floor(budget / n)`` bytes per vector (capped at
    ``d`` and 512).  The budget is picked on diskannpy's 6-decimal grid so that the
    unfloored ratio lands as close as possible to ``target + 0.5`` (safely inside
    the target's bucket); for a tiny ``n`` the grid may be too coarse, and the
    closest achievable size is used.

    Returns (budget in GiB, expected PQ bytes per vector).
    """
    target = max(1, min(round(pq_fraction * d * 4), d, _MAX_PQ_CHUNKS))
    ideal = (target + 0.5) * n / _GIB
    if ideal > _CACHE_THRESHOLD_GIB:
        ideal += _CACHE_SLACK_GIB
    centre = round(ideal * 1e6)
    candidates = [max(step, 1) / 1e6 for step in range(centre - 2, centre + 3)]

    def badness(b: float) -> tuple[int, float]:
        return (
            abs(_pq_bytes_for_budget(b, n, d) - target),
            abs(_bytes_per_vector(b, n) - (target + 0.5)),
        )

    best = min(candidates, key=badness)
    return best, _pq_bytes_for_budget(best, n, d)


def _written_pq_bytes(index_dir: Path) -> int:
    """PQ bytes per vector actually used, from the ``_pq_compressed.bin`` header."""
    header = np.fromfile(index_dir / f"{INDEX_PREFIX}_pq_compressed.bin", dtype=np.int32, count=2)
    return int(header[1])


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _keep_freed_memory() -> bool:
    """Stop glibc malloc from returning big blocks to the kernel (build only).

    DiskANN's PQ training allocates and frees an ``n x 256`` float matrix per
    k-means iteration per chunk; above glibc's 32 MiB mmap cap every one of those
    is a fresh mmap whose pages fault in zeroed (tens of millions of minor faults
    for 392 chunks).  Serving them from the heap and never trimming it cuts the PQ
    phase substantially without changing what is built.  Returns False where
    ``mallopt`` is unavailable (non-glibc), in which case nothing changes.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def cmd_build(args: argparse.Namespace, out: TextIO) -> None:
    """Build a DiskANN disk index for ``args.dataset`` into ``args.index_dir``."""
    dataset = Path(args.dataset)
    index_dir = Path(args.index_dir)
    meta = _load_meta(dataset)
    if index_dir.exists() and any(index_dir.iterdir()):
        if not args.overwrite:
            raise SystemExit(f"{index_dir} is not empty (pass --overwrite to replace it)")
        shutil.rmtree(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)

    base = _prepare(np.load(dataset / "base.npy"), meta["metric"])
    # diskannpy builds integer indexes for l2 only (not mips)
    dtype = _integer_dtype(base, np.load(dataset / "query.npy", mmap_mode="r")) \
        if meta["metric"] == "l2" else np.float32
    base = base.astype(dtype, copy=False)
    n, d = base.shape
    budget_gib, pq_expected = search_memory_budget_gib(n, d, args.pq_fraction)
    threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    params: dict[str, Any] = {
        "R": args.graph_degree,
        "L_build": args.complexity,
        "pq_fraction": args.pq_fraction,
        "pq_bytes": pq_expected,
        "search_memory_maximum_gib": budget_gib,
        "build_memory_maximum_gib": args.build_memory_gb,
        "threads": threads,
        "metric": meta["metric"],
        "diskann_metric": _diskann_metric(meta["metric"]),
        "vector_dtype": np.dtype(dtype).name,
    }
    _log(f"building n={n} d={d} {params}")
    if not _keep_freed_memory():
        _log("mallopt unavailable: PQ training will run with default malloc settings")

    # The vector bin file DiskANN builds from is an input, not part of the index:
    # keep it outside index_dir so disk_bytes counts only what search needs.
    with tempfile.TemporaryDirectory(prefix="diskann-build-", dir=index_dir.parent) as tmp:
        t0 = time.perf_counter()
        vec_file = os.path.join(tmp, "vectors.bin")
        diskannpy.vectors_to_file(vec_file, base)
        del base
        diskannpy.build_disk_index(
            data=vec_file,
            vector_dtype=dtype,
            distance_metric=params["diskann_metric"],
            index_directory=str(index_dir),
            complexity=args.complexity,
            graph_degree=args.graph_degree,
            search_memory_maximum=budget_gib,
            build_memory_maximum=args.build_memory_gb,
            num_threads=threads,
            pq_disk_bytes=0,  # full-precision vectors on disk
            index_prefix=INDEX_PREFIX,
        )
        build_s = time.perf_counter() - t0

    # DiskANN leaves the in-memory build's copy of the vectors behind; search never
    # reads it (the full-precision vectors live in _disk.index), so drop it.
    leftover = index_dir / f"{INDEX_PREFIX}_mem.index.data"
    if leftover.exists():
        _log(f"removing build leftover {leftover.name} ({leftover.stat().st_size} bytes)")
        leftover.unlink()
    params["pq_bytes"] = _written_pq_bytes(index_dir)
    if params["pq_bytes"] != pq_expected:
        _log(f"warning: expected {pq_expected} PQ bytes/vector, DiskANN used {params['pq_bytes']}")
    (index_dir / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
    _emit(
        out,
        {
            "build_s": build_s,
            "build_peak_rss_mb": _peak_rss_mb(),
            "disk_bytes": _dir_bytes(index_dir),
            "params": params,
        },
    )


# ----------------------------------------------------------------------- search


def _search_one_setting(
    index: diskannpy.StaticDiskIndex,
    queries: FloatArray,
    gt: AnyArray,
    k: int,
    complexity: int,
    beam_width: int,
    warmup: int,
) -> dict[str, float]:
    """Warm up, then measure the batch pass and the single-query pass."""
    nq = len(queries)

    def batch() -> AnyArray:
        res = index.batch_search(
            queries,
            k_neighbors=k,
            complexity=complexity,
            num_threads=SEARCH_THREADS,
            beam_width=beam_width,
        )
        return np.asarray(res.identifiers)

    # Warm-up: one full batch pass plus a few single queries.
    batch()
    for i in range(min(warmup, nq)):
        index.search(queries[i], k_neighbors=k, complexity=complexity, beam_width=beam_width)
    rss_after_warmup = _vm_rss_bytes()

    rb0 = _read_bytes()
    batch_ids, batch_s = _timed(batch)
    batch_read = _read_bytes() - rb0

    single_ids = np.empty((nq, k), dtype=np.int64)
    lat = np.empty(nq, dtype=np.float64)
    rb0 = _read_bytes()
    t_all = time.perf_counter()
    for i in range(nq):
        t0 = time.perf_counter()
        res = index.search(queries[i], k_neighbors=k, complexity=complexity, beam_width=beam_width)
        lat[i] = time.perf_counter() - t0
        single_ids[i] = res.identifiers
    single_s = time.perf_counter() - t_all
    single_read = _read_bytes() - rb0
    rss_served = _vm_rss_bytes()

    r1, r10 = _recalls(single_ids, gt)
    _, r10_b = _recalls(batch_ids, gt)
    _log(
        f"L={complexity} W={beam_width}: recall@10 single={r10:.4f} batch={r10_b:.4f} "
        f"batch_read/q={batch_read / nq:.0f}B single_read/q={single_read / nq:.0f}B"
    )
    return {
        "recall@1": r1,
        "recall@10": r10,
        "qps_batch": nq / batch_s,
        "qps_single": nq / single_s,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "rss_after_warmup": float(rss_after_warmup),
        "rss_served": float(rss_served),
        "bytes_read_per_query": single_read / nq,
        "bytes_read_per_query_batch": batch_read / nq,
    }


def cmd_search(args: argparse.Namespace, out: TextIO) -> None:
    """Load a built index in this (fresh) process and sweep the complexities."""
    dataset = Path(args.dataset)
    index_dir = Path(args.index_dir)
    meta = _load_meta(dataset)
    build_params: dict[str, Any] = json.loads((index_dir / PARAMS_FILE).read_text())
    complexities = [int(c) for c in args.complexities.split(",") if c.strip()]
    if args.k < 10:
        raise SystemExit("--k must be >= 10 (recall@10 is reported)")

    dtype = np.dtype(build_params.get("vector_dtype", "float32"))
    # integer indexes take queries of their type: the build checked they are integers
    queries = _prepare(np.load(dataset / "query.npy"), meta["metric"]).astype(dtype)
    gt = np.load(dataset / "gt.npy")
    if gt.shape[0] != queries.shape[0] or gt.shape[1] < 10:
        raise SystemExit(f"gt.npy has shape {gt.shape}, expected ({queries.shape[0]}, >=10)")
    # Baseline: interpreter + numpy + diskannpy + the query/gt arrays, so that
    # rss_serving_mb is what the loaded index costs.
    baseline_rss = _vm_rss_bytes()
    _log(f"baseline VmRSS {baseline_rss / 2**20:.1f} MiB")

    if args.cold:
        _drop_page_cache(index_dir)
        _log(f"dropped {index_dir} from the page cache")

    rb0 = _read_bytes()
    index, load_s = _timed(
        lambda: diskannpy.StaticDiskIndex(
            index_directory=str(index_dir),
            num_threads=SEARCH_THREADS,
            num_nodes_to_cache=args.cache_nodes,
            # 1 = pick cached nodes by replaying _sample_data.bin queries; that replay
            # (thousands of O_DIRECT searches) runs even for 0 nodes, so disable it then.
            cache_mechanism=1 if args.cache_nodes > 0 else 0,
            index_prefix=INDEX_PREFIX,
        )
    )
    _log(
        f"index loaded in {load_s:.3f}s, read {(_read_bytes() - rb0) / 2**20:.1f} MiB from storage"
    )
    disk_bytes = _dir_bytes(index_dir)

    for complexity in complexities:
        if complexity < args.k:
            _log(f"skipping complexity {complexity} < k={args.k}")
            continue
        m = _search_one_setting(
            index, queries, gt, args.k, complexity, args.beam_width, args.warmup
        )
        _emit(
            out,
            {
                "system": SYSTEM,
                "params": {
                    "R": build_params["R"],
                    "L_build": build_params["L_build"],
                    "complexity": complexity,
                    "beam_width": args.beam_width,
                    "pq_bytes": build_params["pq_bytes"],
                    "vector_dtype": dtype.name,
                    "cold": bool(args.cold),
                    "cache_nodes": args.cache_nodes,
                    "bytes_read_per_query_batch": m["bytes_read_per_query_batch"],
                },
                "recall@1": m["recall@1"],
                "recall@10": m["recall@10"],
                "qps_batch": m["qps_batch"],
                "qps_single": m["qps_single"],
                "p50_ms": m["p50_ms"],
                "p99_ms": m["p99_ms"],
                "build_s": None,
                "rss_serving_mb": (m["rss_after_warmup"] - baseline_rss) / 2**20,
                "disk_bytes": disk_bytes,
                "bytes_read_per_query": m["bytes_read_per_query"],
                "rss_served_mb": (m["rss_served"] - baseline_rss) / 2**20,
            },
        )


# -------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a disk index, print one JSON object")
    b.add_argument("--dataset", required=True)
    b.add_argument("--index-dir", required=True)
    b.add_argument("--graph-degree", type=int, default=64, help="R (max out-degree)")
    b.add_argument("--complexity", type=int, default=100, help="L used while building")
    b.add_argument(
        "--pq-fraction",
        type=float,
        default=0.125,
        help="in-RAM PQ codes as a fraction of the raw float32 vectors (default 1/8)",
    )
    b.add_argument("--threads", type=int, default=0, help="build threads (0 = all cores)")
    b.add_argument("--build-memory-gb", type=float, default=8.0, help="build RAM budget")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty index dir")

    s = sub.add_parser("search", help="sweep complexities, print one JSON row per setting")
    s.add_argument("--dataset", required=True)
    s.add_argument("--index-dir", required=True)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--complexities", required=True, help="comma-separated search L values")
    s.add_argument("--beam-width", type=int, default=2, help="W, max parallel IOs per hop")
    s.add_argument(
        "--cold", action="store_true", help="evict index files from the page cache first"
    )
    s.add_argument("--cache-nodes", type=int, default=0, help="nodes cached in RAM (default 0)")
    s.add_argument("--warmup", type=int, default=100, help="single queries run as warm-up")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    out = _claim_stdout()
    if args.command == "build":
        cmd_build(args, out)
    else:
        cmd_search(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
