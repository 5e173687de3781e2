"""faiss peers of the benchmark: the in-RAM references and the on-disk reference.

Systems (all at the same ``nlist``, chosen by :func:`default_nlist` = round(4 * sqrt(n)), the
usual IVF rule of thumb; an explicit ``--nlist`` overrides it):

* ``faiss-ivf-flat``: IndexIVFFlat, full vectors in RAM. Sweeps ``nprobe``.
* ``faiss-ivfpq-opq``: ``OPQ{m},IVF{nlist},PQ{m}`` (8-bit codes, ``m`` = d/8 rounded to a
  divisor of d: d/8 bytes per vector, 1/32 of the float32 vector) wrapped in IndexRefineFlat,
  which reranks ``k * k_factor`` PQ candidates on the full vectors (also in RAM). Sweeps
  ``nprobe`` and ``k_factor``.
* ``faiss-ivf-ondisk``: IVF-Flat whose inverted lists are an OnDiskInvertedLists file
  (``lists.ivfdata``, mmapped), built the faiss demo way: shards added in RAM, written, then
  merged with ``faiss.contrib.ondisk.merge_ondisk``; loaded with ``IO_FLAG_ONDISK_SAME_DIR``.
  Served warm (page cache kept) or cold (``--cold``: the index files are evicted from the page
  cache and from the process's mappings before every timed pass and before every single query;
  see :func:`serve` for the read-ahead and the shorter single-query pass of cold runs).

Each system runs as two subprocesses of :mod:`bench.run`, speaking JSON lines on stdout::

    python -m bench.faiss_peers build SYSTEM --dataset D --index-dir I [--nlist N] [--pq-m M]
    python -m bench.faiss_peers serve SYSTEM --dataset D --index-dir I --sweep JSON [--cold]

``build`` prints one object (build_s, build_peak_rss_mb, disk_bytes, params); ``serve`` prints
one row per sweep point (DESIGN.md section 6 schema, build figures left to the parent).
Cosine data is L2-normalised and searched by inner product.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench import harness
from bench.harness import Dataset

SYSTEMS = ("faiss-ivf-flat", "faiss-ivfpq-opq", "faiss-ivf-ondisk")
INDEX_FILE = "index.faiss"
LISTS_FILE = "lists.ivfdata"
#: Rows added to an index at a time (and rows of one on-disk shard) during builds.
ADD_CHUNK = 65_536
SHARD_ROWS = 262_144
#: faiss samples at most 256 training points per centroid anyway; sampling here keeps the
#: training set (not the whole base) in RAM.
TRAIN_PER_LIST = 256
#: OPQ rotation iterations and rows used to train the OPQ rotation and the PQ codebooks.
OPQ_ITERS = 4
PQ_TRAIN_ROWS = 16_384


def default_nlist(n: int) -> int:
    """round(4 * sqrt(n)), at least 1 and at most n / 8 (so lists are not nearly empty)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 8))


def default_pq_m(d: int) -> int:
    """Sub-quantizers for OPQ+PQ: the divisor of ``d`` nearest d/8 (d/8 bytes per vector)."""
    target = max(1, d / 8)
    return min((m for m in range(1, d + 1) if d % m == 0), key=lambda m: (abs(m - target), m))


def default_sweep(system: str, nlist: int, quick: bool) -> list[dict[str, Any]]:
    """The search settings swept for ``system``."""
    nprobes = [1, 4, 16, 64] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    nprobes = sorted({min(p, nlist) for p in nprobes})
    if system == "faiss-ivfpq-opq":
        # the refine stage makes large nprobe pointless sooner; k_factor 8 measured no better
        # than 4 on fashion-mnist
        nprobes = [p for p in nprobes if 2 <= p <= 64] or nprobes
        return harness.grid(nprobe=nprobes, k_factor=[4] if quick else [2, 4])
    return harness.grid(nprobe=nprobes)


def cold_sweep(nlist: int, quick: bool) -> list[dict[str, Any]]:
    """Settings for the cold on-disk run: fewer and smaller nprobe, since every cold query
    reads all its lists from the device."""
    nprobes = [4, 16, 64] if quick else [2, 4, 8, 16, 32, 64]
    return harness.grid(nprobe=sorted({min(p, nlist) for p in nprobes}))


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """float32 C-contiguous rows; L2-normalised for cosine."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return x


# ------------------------------------------------------------------------------------ build
def _train_sample(base: np.ndarray, nlist: int, metric: str, seed: int = 0) -> np.ndarray:
    n = len(base)
    size = min(n, TRAIN_PER_LIST * nlist)
    if size == n:
        return _prepare(base, metric)
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return _prepare(base[rows], metric)


def _add_rows(index: faiss.Index, base: np.ndarray, start: int, stop: int, metric: str) -> None:
    for s in range(start, stop, ADD_CHUNK):
        index.add(_prepare(base[s : min(s + ADD_CHUNK, stop)], metric))


def _ivf_flat(d: int, nlist: int, metric: str) -> faiss.Index:
    fm = _faiss_metric(metric)
    quantizer = faiss.IndexFlatL2(d) if fm == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
    return faiss.IndexIVFFlat(quantizer, d, nlist, fm)  # the wrapper keeps quantizer alive


def _opq_ivfpq_refine(d: int, nlist: int, m: int, metric: str) -> faiss.Index:
    """``OPQ{m},IVF{nlist},PQ{m}`` in IndexRefineFlat, with trimmed training effort.

    faiss's defaults (50 OPQ iterations, 40 PQ k-means iterations in the first, 65536 training
    rows) take many minutes at d=784 on two cores; the refine stage on full vectors repairs
    most of what a less trained codebook loses, so the build is kept within the benchmark's
    time budget with OPQ_ITERS iterations on PQ_TRAIN_ROWS rows.
    """
    opq = faiss.OPQMatrix(d, m)
    opq.niter, opq.niter_pq_0, opq.niter_pq = OPQ_ITERS, 4, 4
    opq.max_train_points = PQ_TRAIN_ROWS
    fm = _faiss_metric(metric)
    quantizer = faiss.IndexFlatL2(d) if fm == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
    ivfpq = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, fm)
    ivfpq.pq.cp.niter = 10
    ivfpq.pq.cp.max_points_per_centroid = PQ_TRAIN_ROWS // 256
    pre = faiss.IndexPreTransform(opq, ivfpq)  # faiss's wrappers keep their parts alive
    return faiss.IndexRefineFlat(pre)


def build(system: str, ds: Dataset, index_dir: Path, nlist: int | None, pq_m: int | None
          ) -> dict[str, Any]:
    """Build ``system`` over the dataset's base into ``index_dir`` (emptied first)."""
    base = ds.base()
    nlist = nlist or default_nlist(len(base))
    if index_dir.exists():
        shutil.rmtree(index_dir)
    index_dir.mkdir(parents=True)
    params: dict[str, Any] = {"nlist": nlist}
    build_s, anon_mb = harness.anon_peak(
        lambda: _build_into(system, base, ds.metric, nlist, pq_m, index_dir, params))
    return {
        "build_s": round(build_s, 3),
        "build_peak_rss_mb": round(harness.peak_rss_mb(), 1),
        "build_peak_anon_mb": round(anon_mb, 1),
        "disk_bytes": harness.dir_bytes(index_dir),
        "params": params,
    }


def _build_into(system: str, base: np.ndarray, metric: str, nlist: int, pq_m: int | None,
                index_dir: Path, params: dict[str, Any]) -> float:
    """Train, fill and write ``system``'s index; records its knobs in ``params``; seconds."""
    n, d = base.shape
    t0 = time.perf_counter()
    sample = _train_sample(base, nlist, metric)
    if system == "faiss-ivf-flat":
        index = _ivf_flat(d, nlist, metric)
        index.train(sample)
        del sample
        _add_rows(index, base, 0, n, metric)
        faiss.write_index(index, str(index_dir / INDEX_FILE))
    elif system == "faiss-ivfpq-opq":
        m = pq_m or default_pq_m(d)
        params.update(pq_m=m, factory=f"OPQ{m},IVF{nlist},PQ{m}", refine="IndexRefineFlat",
                      opq_iters=OPQ_ITERS, train_rows_pq=PQ_TRAIN_ROWS)
        index = _opq_ivfpq_refine(d, nlist, m, metric)
        index.train(sample)
        del sample
        _add_rows(index, base, 0, n, metric)
        faiss.write_index(index, str(index_dir / INDEX_FILE))
    elif system == "faiss-ivf-ondisk":
        _build_ondisk(base, sample, nlist, metric, index_dir)
        params.update(invlists="OnDiskInvertedLists")
    else:
        raise ValueError(f"unknown faiss system {system!r}; expected one of {SYSTEMS}")
    return time.perf_counter() - t0


def _build_ondisk(base: np.ndarray, sample: np.ndarray, nlist: int, metric: str,
                  index_dir: Path) -> None:
    """The faiss demo recipe (demos/demo_ondisk_ivf.py): train once, fill shards of
    SHARD_ROWS in RAM, then merge their lists into one mmapped ``.ivfdata`` file."""
    from faiss.contrib.ondisk import merge_ondisk

    n, d = base.shape
    work = index_dir / "shards"
    work.mkdir()
    trained = _ivf_flat(d, nlist, metric)
    trained.train(sample)
    trained_path = work / "trained.index"
    faiss.write_index(trained, str(trained_path))
    shards: list[str] = []
    for i, s in enumerate(range(0, n, SHARD_ROWS)):
        shard = faiss.read_index(str(trained_path))
        _add_rows(shard, base, s, min(s + SHARD_ROWS, n), metric)
        path = work / f"shard{i}.index"
        faiss.write_index(shard, str(path))
        shards.append(str(path))
        del shard
    index = faiss.read_index(str(trained_path))
    merge_ondisk(index, shards, str(index_dir / LISTS_FILE))
    faiss.write_index(index, str(index_dir / INDEX_FILE))
    del index
    shutil.rmtree(work)  # shards are build input, not part of the index


# ------------------------------------------------------------------------------------ serve
def serve(system: str, ds: Dataset, index_dir: Path, sweep: list[dict[str, Any]], cold: bool,
          repeats: int, cold_single_queries: int) -> None:
    """Load the index in this process and emit one row per sweep point.

    Cold (on-disk index only): the lists file's mapping gets MADV_RANDOM, so a page fault reads
    the touched pages, not this VM's 8 MiB read-ahead window around them (which would make
    every cold query read ~90 MB on fashion-mnist and measure the read-ahead setting rather
    than the index); the page cache is dropped before every timed pass and every single query,
    and the single-query pass covers only the first ``cold_single_queries`` queries, since each
    re-reads its lists from the device.
    """
    queries = _prepare(ds.queries, ds.metric)
    baseline, baseline_anon = harness.rss_bytes(), harness.rss_anon_bytes()
    if cold and system != "faiss-ivf-ondisk":
        raise ValueError(f"--cold applies to faiss-ivf-ondisk only, not {system}")
    if cold:
        harness.drop_page_cache(index_dir)
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if system == "faiss-ivf-ondisk" else 0
    t0 = time.perf_counter()
    index = faiss.read_index(str(index_dir / INDEX_FILE), flags)
    load_s = time.perf_counter() - t0
    ivf = faiss.extract_index_ivf(index)
    if cold and not harness.advise_random(index_dir):
        raise RuntimeError(f"no mapping of {index_dir / LISTS_FILE} found to advise")
    harness.log(f"{system}: loaded {index.ntotal} vectors, nlist {ivf.nlist} in {load_s:.2f}s")

    def batch(x: np.ndarray) -> tuple[np.ndarray, Any]:
        return index.search(x, 10)[1], None

    def single(x: np.ndarray) -> np.ndarray:
        ids: np.ndarray = index.search(x, 10)[1]
        return ids

    def drop() -> None:
        harness.drop_page_cache(index_dir)

    refine: Any = faiss.downcast_index(index)  # IndexRefineFlat for faiss-ivfpq-opq
    for point in sweep:
        ivf.nprobe = int(point["nprobe"])
        if "k_factor" in point:
            refine.k_factor = float(point["k_factor"])
        m = harness.measure(
            batch, single, queries, ds.gt, repeats=repeats,
            single_queries=cold_single_queries if cold else None,
            before_pass=drop if cold else None, before_query=drop if cold else None,
        )
        params: dict[str, Any] = {"nlist": ivf.nlist, **point}
        if cold:
            params["madvise"] = "random"
        if system == "faiss-ivfpq-opq":
            ivfpq: Any = faiss.downcast_index(ivf)
            params["pq_m"] = ivfpq.pq.M
        harness.emit(harness.make_row(
            system, params, m, baseline, baseline_anon, cold=cold,
            load_s=round(load_s, 3), threads=faiss.omp_get_max_threads(),
        ))
        harness.log(f"{system}{' cold' if cold else ''} {point}: recall@10 {m.recall10:.4f} "
                    f"batch {m.qps_batch:.0f} qps, single {m.qps_single:.0f} qps")


# -------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faiss_peers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "serve"):
        p = sub.add_parser(name)
        p.add_argument("system", choices=SYSTEMS)
        p.add_argument("--dataset", type=Path, required=True)
        p.add_argument("--index-dir", type=Path, required=True)
        p.add_argument("--threads", type=int, default=2, help="OpenMP threads of faiss")
        if name == "build":
            p.add_argument("--nlist", type=int, default=None)
            p.add_argument("--pq-m", type=int, default=None)
        else:
            p.add_argument("--sweep", required=True, help="JSON list of {nprobe[, k_factor]}")
            p.add_argument("--cold", action="store_true", help="faiss-ivf-ondisk: measure cold")
            p.add_argument("--cold-single-queries", type=int, default=200,
                           help="queries in a cold single-query pass")
            p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    ds = harness.load_dataset(args.dataset)
    if args.command == "build":
        harness.emit(build(args.system, ds, args.index_dir, args.nlist, args.pq_m))
    else:
        serve(args.system, ds, args.index_dir, harness.parse_sweep(args.sweep), args.cold,
              args.repeats, args.cold_single_queries)


if __name__ == "__main__":
    main()
