"""Where a serving process's memory goes: RSS step by step, and what holds it.

Opens a collection the way the benchmark's serving subprocess does (:func:`bench.anns_peer.serve`:
read-only, direct reads, the library's default block cache, the baseline RSS taken after the
imports and the dataset's queries are loaded) and serves a few sweep points exactly as the
benchmark measures them (:func:`bench.harness.measure`: warm-up, batch repeats, one query per
call over all queries)::

    python -m bench.serving_memory DATA COLLECTION [--points JSON] [--rounds N] \\
        [--repeats N] [--block-cache-bytes N] [--io-threads N] [--tracemalloc] [--out FILE]

One line per step, RSS above the baseline: ``open``; ``first query`` (one search);
then per round and point of ``--points`` (SearchParams objects; default a light then a heavy
setting): ``warm`` (where the benchmark reads its ``rss_serving_mb``: after the point's
warm-up, so after everything the points before it served) and ``served`` (after its batch
and single-query passes); at the end ``trim`` (:func:`anns.memory.release_freed_heap`).
``peak`` is the highest RSS since the step before (a batch's transient memory).

The RSS is split by kind of mapping (``/proc/self/smaps``): ``heap`` (glibc's main arena),
``arenas`` (glibc's other arenas: 64 MiB-aligned reservations, here the I/O threads'),
``anon`` (other anonymous memory: blocks glibc maps on their own such as numpy arrays and
faiss indexes, and CPython's small-object arenas), ``blas`` (reservations of 32 MiB or more:
OpenBLAS's GEMM buffers, of which a batch product touches a few MiB once), ``stacks``
(thread stacks) and ``files`` (file pages: library code faulted in as it is first run; it
moves with the machine's page cache). ``malloc in use`` is what glibc has handed out and not
got back (``mallinfo2``): heap and arenas above it are free memory glibc has not returned.
The detail blocks add the collection's own parts (:meth:`anns.Collection.info`'s
``memory``), glibc's arenas, the threads by name and the largest anonymous mappings; with
``--tracemalloc`` the bytes Python and numpy allocations hold are traced too (tracing costs
memory itself, so those runs read higher).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import re
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import anns
from anns.config import SearchParams, validated
from anns.memory import release_freed_heap
from bench import harness

MB = float(1 << 20)
_ARENA_BYTES = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: every non-main arena reserves it
_BLAS_BUFFER_BYTES = 32 << 20
KINDS = ("heap", "arenas", "anon", "blas", "stacks", "files")
DEFAULT_POINTS = [{"max_postings": 8, "refine_factor": 3.0},
                  {"max_postings": 64, "refine_factor": 3.0}]


# ---------------------------------------------------------------------------------- mappings
def smaps_by_kind() -> dict[str, int]:
    """Resident bytes of this process by kind of mapping (see the module docstring)."""
    kinds: dict[str, int] = collections.Counter()
    for kind, _, rss in mappings():
        kinds[kind] += rss
    return dict(kinds)


def mappings() -> list[tuple[str, int, int]]:
    """(kind, size, resident bytes) of every mapping of this process."""
    maps: list[tuple[int, int, str, str, int]] = []  # start, end, perms, path, rss
    header = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = header.match(line)
            if m:
                maps.append((int(m[1], 16), int(m[2], 16), m[3], m[4].strip(), 0))
            elif line.startswith("Rss:"):
                start, end, perms, path, _ = maps[-1]
                maps[-1] = (start, end, perms, path, int(line.split()[1]) * 1024)
    out = []
    for i, (start, end, perms, path, rss) in enumerate(maps):
        if path == "[heap]":
            kind = "heap"
        elif path == "[stack]":
            kind = "stacks"
        elif path.startswith("["):
            kind = "files"  # vdso, vvar: a few pages
        elif path:
            kind = "files"
        elif start % _ARENA_BYTES == 0 and _arena_span(maps, i) == _ARENA_BYTES:
            kind = "arenas"
        elif i > 0 and maps[i - 1][2].startswith("---") and maps[i - 1][1] == start \
                and not maps[i - 1][3]:
            kind = "stacks"  # a guard page right below: a pthread stack
        elif end - start >= _BLAS_BUFFER_BYTES:
            kind = "blas"  # OpenBLAS's per-thread GEMM buffers: 32 MiB or more, mostly untouched
        else:
            kind = "anon"
        out.append((kind, end - start, rss))
    return out


def _arena_span(maps: list[tuple[int, int, str, str, int]], i: int) -> int:
    """Bytes of the anonymous mappings contiguous from maps[i] (an arena: rw part + ---p
    reserve)."""
    start, end = maps[i][0], maps[i][1]
    j = i + 1
    while j < len(maps) and maps[j][0] == end and not maps[j][3] and end - start < _ARENA_BYTES:
        end = maps[j][1]
        j += 1
    return end - start


def status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux 4.0+), so each step reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def threads_by_name() -> dict[str, int]:
    names: dict[str, int] = collections.Counter()
    for task in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{task}/comm").read_text().strip()
        except OSError:
            continue
        names[re.sub(r"[-_:]?\d+$", "", name) or name] += 1
    return dict(sorted(names.items()))


# ---------------------------------------------------------------------------------- malloc
class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL(None)


def malloc_figures() -> dict[str, int]:
    """glibc's view over all arenas: bytes in use, free inside arenas, in mapped blocks,
    and the number of arenas."""
    _libc.mallinfo2.restype = _MallInfo2
    info = _libc.mallinfo2()
    with tempfile.TemporaryFile("w+") as fh:
        fp = _libc.fdopen(os.dup(fh.fileno()), b"w")
        _libc.malloc_info(0, ctypes.c_void_p(fp))
        _libc.fclose(ctypes.c_void_p(fp))
        fh.seek(0)
        arenas = len(re.findall(r"<heap nr=", fh.read()))
    return {"in_use": info.uordblks, "free": info.fordblks, "mapped": info.hblkhd,
            "arenas": arenas}


_libc.fdopen.restype = ctypes.c_void_p


# ---------------------------------------------------------------------------- engine parts
def engine_parts(coll: anns.Collection) -> dict[str, int]:
    """Bytes the open collection holds by part (:meth:`anns.Collection.info`'s ``memory``)."""
    return dict(coll.info()["memory"])


# ---------------------------------------------------------------------------------- report
class Recorder:
    """Snapshots after each step, relative to the baseline taken at construction."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.base_rss, self.base_anon = status_kib("VmRSS"), status_kib("RssAnon")
        self.base_kinds = smaps_by_kind()
        self.base_in_use = malloc_figures()["in_use"] / MB
        reset_peak()
        self.base_traced = tracemalloc.get_traced_memory()[0] if trace else 0
        self.steps: list[dict[str, Any]] = []

    def snap(self, step: str, coll: anns.Collection | None, **extra: Any) -> dict[str, Any]:
        kinds = smaps_by_kind()
        row: dict[str, Any] = {
            "step": step,
            "rss_mb": (status_kib("VmRSS") - self.base_rss) / MB,
            "peak_mb": (status_kib("VmHWM") - self.base_rss) / MB,
            "anon_mb": (status_kib("RssAnon") - self.base_anon) / MB,
            "kinds_mb": {k: (kinds.get(k, 0) - self.base_kinds.get(k, 0)) / MB
                         for k in KINDS},
            "malloc_mb": {k: v / MB if k != "arenas" else v
                          for k, v in malloc_figures().items()},
            "threads": threads_by_name(),
            **extra,
        }
        if coll is not None:
            row["parts_mb"] = {k: v / MB for k, v in engine_parts(coll).items()}
        if self.trace:
            row["traced_mb"] = (tracemalloc.get_traced_memory()[0] - self.base_traced) / MB
        self.steps.append(row)
        print(self.line(row), flush=True)
        reset_peak()
        return row

    def line(self, row: dict[str, Any]) -> str:
        kinds = " ".join(f"{k} {v:5.1f}" for k, v in row["kinds_mb"].items())
        kinds += f" | malloc in use {row['malloc_mb']['in_use'] - self.base_in_use:5.1f}"
        text = (f"{row['step']:<34} rss {row['rss_mb']:5.1f} (peak {row['peak_mb']:5.1f}) "
                f"anon {row['anon_mb']:5.1f} | "
                f"{kinds}")
        if self.trace:
            text += f" | traced {row['traced_mb']:5.1f}"
        if "qps_batch" in row:
            text += (f" | qps batch {row['qps_batch']:5.0f} single {row['qps_single']:4.0f} "
                     f"r@10 {row['recall10']:.4f}")
        return text


def print_details(row: dict[str, Any]) -> None:
    print(f"\nafter '{row['step']}':")
    if "parts_mb" in row:
        print("  engine parts (MB): " + ", ".join(
            f"{k} {v:.2f}" for k, v in row["parts_mb"].items()))
    m = row["malloc_mb"]
    print(f"  malloc: {m['arenas']} arenas, in use {m['in_use']:.1f} MB, free in arenas "
          f"{m['free']:.1f} MB, mapped blocks {m['mapped']:.1f} MB")
    print("  threads: " + ", ".join(f"{k} x{v}" for k, v in row["threads"].items()))
    big = sorted((m for m in mappings() if m[0] in ("anon", "blas") and m[2] >= 64 << 10),
                 key=lambda m: -m[2])
    print("  largest anonymous mappings (size/resident KiB): " + ", ".join(
        f"{size >> 10}/{rss >> 10}" for _, size, rss in big[:12]))


def serve_point(coll: anns.Collection, ds: harness.Dataset, point: dict[str, Any],
                rec: Recorder, repeats: int) -> harness.Measurement:
    """One sweep point as :func:`bench.anns_peer.serve` measures it (:func:`harness.measure`:
    warm-up, batch repeats, single-query pass, stats kept as the benchmark keeps them), with a
    snapshot where the benchmark reads its RSS (after the warm-up) and one after the point."""
    label = ",".join(f"{k}={v}" for k, v in point.items())
    params = validated(SearchParams, **point)
    calls: list[tuple[anns.SearchStats, float]] = []

    def batch(x: np.ndarray) -> tuple[np.ndarray, Any]:
        t = time.perf_counter()
        result = coll.search(x, 10, params, return_stats=True)
        return result.ids, (result.stats, time.perf_counter() - t)

    def single(x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        result = coll.search(x, 10, params, return_stats=True)
        calls.append((result.stats, time.perf_counter() - t))
        return result.ids

    passes = [0]

    def before_pass() -> None:  # the first call follows measure's own RSS reading
        if passes[0] == 0:
            rec.snap(f"warm {label}", coll)
        passes[0] += 1

    m = harness.measure(batch, single, ds.queries, ds.gt, repeats=repeats,
                        before_pass=before_pass)
    rec.snap(f"served {label}", coll, qps_batch=m.qps_batch, qps_single=m.qps_single,
             recall10=m.recall10)
    return m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="dataset directory (query.npy, gt.npy)")
    parser.add_argument("collection", type=Path)
    parser.add_argument("--points", default=json.dumps(DEFAULT_POINTS),
                        help="JSON list of SearchParams objects, served in order")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="batch repeats per point")
    parser.add_argument("--block-cache-bytes", type=int,
                        default=anns.StorageConfig().block_cache_bytes)
    parser.add_argument("--io-threads", type=int, default=anns.StorageConfig().io_threads)
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads of faiss")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the steps as JSON")
    args = parser.parse_args(argv)

    faiss.omp_set_num_threads(args.threads)
    ds = harness.load_dataset(args.data)
    points = harness.parse_sweep(args.points)
    if args.tracemalloc:
        tracemalloc.start()
    rec = Recorder(args.tracemalloc)
    storage = anns.StorageConfig(direct_reads=True, block_cache_bytes=args.block_cache_bytes,
                                 io_threads=args.io_threads, read_only=True)
    coll = anns.Collection.open(args.collection, storage)
    try:
        print_details(rec.snap("open", coll))
        print()
        coll.search(ds.queries[:1], 10, **points[0])
        rec.snap("first query", coll)
        recalls = []
        for r in range(args.rounds):
            for point in points:
                m = serve_point(coll, ds, point, rec, args.repeats)
                recalls.append(m.recall10)
            if r == 0:
                print_details(rec.steps[-1])
                print()
        release_freed_heap()
        print_details(rec.snap("trim", coll))
        print("\nrecall@10 of the batch passes: " + ", ".join(f"{r:.4f}" for r in recalls))
    finally:
        coll.close()
    if args.out is not None:
        args.out.write_text(json.dumps(rec.steps, indent=1) + "\n")


if __name__ == "__main__":
    main()
