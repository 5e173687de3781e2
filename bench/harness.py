"""Measurement utilities shared by every benchmarked system (DESIGN.md section 6).

What a serving subprocess measures, and how:

* **memory**: current RSS is ``VmRSS`` of ``/proc/self/status`` (``RssAnon`` too: the part that
  is not file pages, e.g. of an mmapped index); peak RSS is ``VmHWM`` (see :func:`peak_rss_mb`
  for why not ``ru_maxrss``).
  ``rss_serving_mb`` = RSS after loading the index and warming up, minus the *baseline* RSS the
  same process had after importing its libraries and loading queries and ground truth, before
  the index was loaded: what serving the index costs, not what the interpreter costs.
  ``rss_served_mb`` is the same after the timed passes (a batch of every query, then one query
  per call over all of them): what the process holds once it has served the setting, which
  the warm-up of a few queries understates for an engine whose heap grows with its batches
  (anns: 11.6 MB after warm-up, 16–18 after serving, at one Fashion-MNIST setting). The
  memory targets read the larger of the two (:mod:`bench.targets`).
* **disk reads**: ``read_bytes`` of ``/proc/self/io`` (bytes this process made the kernel fetch
  from the block device; page-cache hits count nothing, O_DIRECT reads and mmap faults count),
  and ``syscr`` (read system calls of every thread: with O_DIRECT each one is a device read;
  mmap faults and asynchronous I/O are not counted, so it means something for anns only; the
  calls that reading ``/proc/self/io`` itself makes are subtracted, see :func:`io_overhead`).
* **cold**: :func:`drop_page_cache` evicts a directory's files from the page cache, including
  pages this process has mapped (an mmapped index), so the next access reads the device.
* **speed and quality**: :func:`measure` runs the batch pass (all queries in one call, best of a
  few repeats), then the single-query pass (one query per call over all queries: QPS, p50/p99
  latency, bytes read per query), and scores recall@1/@10 against ``gt.npy``.

Subprocesses talk to the parent (:mod:`bench.run`) in JSON lines on stdout (:func:`emit`);
their logs go to stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from anns import memory

#: The keys every benchmark row has (DESIGN.md section 6); other tools read them.
ROW_KEYS = (
    "system", "params", "recall@1", "recall@10", "qps_batch", "qps_single", "p50_ms", "p99_ms",
    "build_s", "rss_serving_mb", "disk_bytes", "bytes_read_per_query",
)

MB = float(1 << 20)

#: A batch search: float32 queries [q, d] -> (ids int64 [q, >=10], anything the system wants to
#: keep about that call, e.g. anns SearchStats; the value of the fastest repeat is kept).
BatchSearch = Callable[[np.ndarray], tuple[np.ndarray, Any]]
#: A single-query search: float32 [1, d] -> ids [1, >=10] (or [>=10]).
SingleSearch = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------ process figures
def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS``), in bytes."""
    return memory.rss_bytes()


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (``RssAnon``: heap, not file pages), bytes."""
    return _status_kib("RssAnon") * 1024


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (``VmHWM``, see :func:`anns.memory.peak_rss_bytes`)."""
    return memory.peak_rss_bytes() / 2**20


_T = TypeVar("_T")


def anon_peak(fn: Callable[[], _T], interval: float = 0.05) -> tuple[_T, float]:
    """Call ``fn`` while a thread samples ``RssAnon`` every ``interval`` seconds; returns
    (fn's result, the largest anonymous RSS seen, in MiB).

    VmHWM counts file pages too: a build streaming a memory-mapped input has those pages in its
    RSS (the kernel reclaims them when it needs to), so its peak says little about the memory
    the build needs. The anonymous peak does; sampled, it can miss a spike shorter than
    ``interval``.
    """
    peak = [rss_anon_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], rss_anon_bytes())

    sampler = threading.Thread(target=sample, name="anon-peak", daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        stop.set()
        sampler.join()
    return result, max(peak[0], rss_anon_bytes()) / MB


def read_bytes() -> int:
    """Bytes this process has caused to be read from storage (``read_bytes`` of /proc/self/io)."""
    return io_counters()[0]


def io_counters() -> tuple[int, int]:
    """(``read_bytes``, ``syscr``) of /proc/self/io: bytes read from storage and read calls."""
    fields: dict[str, int] = {}
    with open("/proc/self/io", encoding="ascii") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            fields[name] = int(value)
    try:
        return fields["read_bytes"], fields["syscr"]
    except KeyError as e:
        raise RuntimeError(f"{e.args[0]} not found in /proc/self/io") from None


def io_overhead(trials: int = 5) -> int:
    """Read calls that one :func:`io_counters` call adds to the next one's ``syscr``."""
    deltas = []
    for _ in range(trials):
        a, b = io_counters()[1], io_counters()[1]
        deltas.append(b - a)
    return min(deltas)


def dir_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (a file: its size)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------ page cache
_MADV_RANDOM, _MADV_DONTNEED = 1, 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _advise_mappings(directory: Path, advice: int) -> int:
    """madvise every mapping of this process whose file lies under ``directory``; returns how
    many mappings were advised."""
    prefix = str(directory.resolve()) + os.sep
    count = 0
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip().startswith(prefix):
                start, end = (int(a, 16) for a in parts[0].split("-"))
                _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), advice)
                count += 1
    return count


def advise_random(directory: Path) -> int:
    """MADV_RANDOM on this process's mappings of files under ``directory``: page faults then
    read only the touched pages instead of the device's read-ahead window around them (8 MiB
    on this VM, see /sys/block/*/queue/read_ahead_kb). Returns the number of mappings."""
    return _advise_mappings(directory, _MADV_RANDOM)


def drop_page_cache(directory: Path) -> None:
    """Evict every file under ``directory`` from the OS page cache (and from this process's
    mappings), so that the next read of them goes to the device. Dirty pages are flushed
    first: the kernel cannot drop them.

    The kernel never evicts a page that is mapped into a process, so for an mmapped index
    (faiss OnDiskInvertedLists) fadvise alone would do nothing: MADV_DONTNEED first makes this
    process forget its mappings of those pages (clean shared file pages: nothing is lost, the
    next access faults them in again from the device).
    """
    _advise_mappings(directory, _MADV_DONTNEED)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------- recall
def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """recall@k: mean over queries of |found[:, :k] ∩ truth[:, :k]| / k (-1 never matches).

    Counted from the truth side, so a duplicated id in ``found`` cannot count twice.
    """
    f = np.asarray(found)[:, :k].astype(np.int64, copy=False)
    t = np.asarray(truth)[:, :k].astype(np.int64, copy=False)
    hits = (t[:, :, None] == f[:, None, :]).any(axis=2).sum()
    return float(hits) / (k * len(t))


# --------------------------------------------------------------------------------- measure
@dataclass(frozen=True)
class Measurement:
    """The speed, quality and memory figures of one (system, setting) in one process."""

    recall1: float
    recall10: float
    qps_batch: float
    qps_single: float
    p50_ms: float
    p99_ms: float
    bytes_read_per_query: float
    """read_bytes delta over the single-query pass / number of queries."""
    batch_bytes_read_per_query: float
    """read_bytes delta over the fastest batch repeat / number of queries."""
    read_calls_per_query: float
    """Read system calls (syscr) over the single-query pass / number of queries."""
    batch_read_calls_per_query: float
    """Read system calls over the fastest batch repeat / number of queries."""
    batch_seconds: float
    """Wall time of the fastest batch repeat."""
    batch_repeats: int
    single_queries: int
    """Queries in the single-query pass."""
    rss_bytes: int
    """RSS after warm-up (absolute)."""
    rss_anon_bytes: int
    rss_served_bytes: int
    """RSS after the timed passes (absolute)."""
    batch_info: Any
    """What the batch callable returned beside the ids on the fastest repeat."""


def measure(
    batch_search: BatchSearch,
    single_search: SingleSearch,
    queries: np.ndarray,
    gt: np.ndarray,
    *,
    repeats: int = 3,
    batch_budget_s: float = 4.0,
    warmup_queries: int = 100,
    single_queries: int | None = None,
    before_pass: Callable[[], None] | None = None,
    before_query: Callable[[], None] | None = None,
) -> Measurement:
    """Measure one setting: warm-up, batch pass, single-query pass.

    ``queries``: float32 [q, d]; ``gt``: int [q, >=10] exact neighbours. Warm-up is one batch
    call on the first ``warmup_queries`` queries and as many single calls (code paths, caches,
    allocator). The batch pass is repeated up to ``repeats`` times, stopping early once the
    repeats so far took ``batch_budget_s`` (slow settings are timed once); the fastest counts.
    The single pass times each call (p50/p99) and the pass as a whole (qps_single), over all
    queries or the first ``single_queries`` of them. Recall is scored on the batch pass (all
    queries); a single pass that disagrees by more than 0.01 recall@10 is logged.
    ``before_pass`` runs before every timed pass and ``before_query`` before every single
    query, outside the timings (cold measurements).
    """
    nq = len(queries)
    ns = nq if single_queries is None else max(1, min(single_queries, nq))
    w = min(warmup_queries, nq)
    batch_search(queries[:w])
    for i in range(w):
        single_search(queries[i : i + 1])
    rss, anon = rss_bytes(), rss_anon_bytes()
    overhead = io_overhead()

    best_s, best_info, best_read, best_calls, runs, spent = np.inf, None, 0, 0, 0, 0.0
    batch_ids: np.ndarray | None = None
    while runs < max(1, repeats) and (runs == 0 or spent < batch_budget_s):
        if before_pass is not None:
            before_pass()
        rb0, rc0 = io_counters()
        t0 = time.perf_counter()
        ids, info = batch_search(queries)
        elapsed = time.perf_counter() - t0
        rb1, rc1 = io_counters()
        runs, spent = runs + 1, spent + elapsed
        if elapsed < best_s:
            best_s, best_info, batch_ids = elapsed, info, ids
            best_read, best_calls = rb1 - rb0, max(0, rc1 - rc0 - overhead)

    if before_pass is not None:
        before_pass()
    lat = np.empty(ns, dtype=np.float64)
    single_ids: list[np.ndarray] = []
    read_total = calls_total = 0
    single_total = 0.0
    for i in range(ns):
        if before_query is not None:
            before_query()
        rb0, rc0 = io_counters()
        t0 = time.perf_counter()
        ids1 = single_search(queries[i : i + 1])
        lat[i] = time.perf_counter() - t0
        rb1, rc1 = io_counters()
        read_total += rb1 - rb0
        calls_total += max(0, rc1 - rc0 - overhead)
        single_total += lat[i]
        single_ids.append(np.asarray(ids1).reshape(-1))
    rss_served = rss_bytes()
    found = np.stack([row[:10] for row in single_ids])
    if batch_ids is None:  # unreachable: the loop above runs at least once
        raise RuntimeError("no batch pass was run")
    batch_r10 = recall_at(batch_ids, gt, 10)
    single_r10, same_r10 = recall_at(found, gt[:ns], 10), recall_at(batch_ids[:ns], gt[:ns], 10)
    if abs(single_r10 - same_r10) > 0.01:
        log(f"warning: on the first {ns} queries, single-query recall@10 {single_r10:.4f} "
            f"differs from the batch pass's {same_r10:.4f}")
    return Measurement(
        recall1=recall_at(batch_ids, gt, 1),
        recall10=batch_r10,
        qps_batch=nq / best_s,
        qps_single=ns / single_total,
        p50_ms=float(np.percentile(lat, 50) * 1e3),
        p99_ms=float(np.percentile(lat, 99) * 1e3),
        bytes_read_per_query=read_total / ns,
        batch_bytes_read_per_query=best_read / nq,
        read_calls_per_query=calls_total / ns,
        batch_read_calls_per_query=best_calls / nq,
        batch_seconds=float(best_s),
        batch_repeats=runs,
        single_queries=ns,
        rss_bytes=rss,
        rss_anon_bytes=anon,
        rss_served_bytes=rss_served,
        batch_info=best_info,
    )


def make_row(
    system: str,
    params: dict[str, Any],
    m: Measurement,
    baseline_rss: int,
    baseline_anon: int,
    read_calls: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A benchmark row (DESIGN.md section 6) from a measurement of a serving process.

    ``build_s`` and ``disk_bytes`` are left None here; the parent fills them from the build
    subprocess. Extra keys (``cold``, ``profile``, ...) are appended after the schema keys;
    ``loadavg_1m`` (the machine's load when the row was written) tells how noisy it was.
    ``read_calls``: also report read calls per query (for a system whose reads are read system
    calls: anns under O_DIRECT; an mmapped index faults pages in without any).
    """
    load1 = os.getloadavg()[0]
    row: dict[str, Any] = {
        "system": system,
        "params": params,
        "recall@1": round(m.recall1, 4),
        "recall@10": round(m.recall10, 4),
        "qps_batch": round(m.qps_batch, 1),
        "qps_single": round(m.qps_single, 1),
        "p50_ms": round(m.p50_ms, 3),
        "p99_ms": round(m.p99_ms, 3),
        "build_s": None,
        "rss_serving_mb": round((m.rss_bytes - baseline_rss) / MB, 1),
        "disk_bytes": None,
        "bytes_read_per_query": round(m.bytes_read_per_query, 1),
        "rss_anon_serving_mb": round((m.rss_anon_bytes - baseline_anon) / MB, 1),
        "rss_served_mb": round((m.rss_served_bytes - baseline_rss) / MB, 1),
        "batch_bytes_read_per_query": round(m.batch_bytes_read_per_query, 1),
        "batch_repeats": m.batch_repeats,
        "single_queries": m.single_queries,
        "loadavg_1m": round(load1, 2),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    if read_calls:
        row["read_calls_per_query"] = round(m.read_calls_per_query, 2)
        row["batch_read_calls_per_query"] = round(m.batch_read_calls_per_query, 2)
    row.update(extra)
    return row


# ------------------------------------------------------------------------------- plumbing
@dataclass(frozen=True)
class Dataset:
    """A DESIGN.md dataset directory, opened for serving (the base stays on disk)."""

    path: Path
    metric: str
    queries: np.ndarray
    """float32 [q, d], C-contiguous."""
    gt: np.ndarray
    """int64 [q, >=10]."""
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    def base(self) -> np.ndarray:
        """The base vectors, memory-mapped (float32 [n, d])."""
        base: np.ndarray = np.load(self.path / "base.npy", mmap_mode="r")
        return base


def load_dataset(path: Path) -> Dataset:
    """Open a dataset directory: metric from meta.json, queries and gt loaded in RAM."""
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("metric") not in ("l2", "ip", "cosine"):
        raise ValueError(f"{path / 'meta.json'}: unsupported metric {meta.get('metric')!r}")
    queries = np.ascontiguousarray(np.load(path / "query.npy"), dtype=np.float32)
    gt = np.load(path / "gt.npy").astype(np.int64)
    if gt.ndim != 2 or gt.shape[0] != len(queries) or gt.shape[1] < 10:
        raise ValueError(f"{path / 'gt.npy'} has shape {gt.shape}, expected ({len(queries)}, >=10)")
    return Dataset(path, meta["metric"], queries, gt, meta)


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line to stdout (the subprocess-to-parent channel)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    """One progress line on stderr."""
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def parse_sweep(text: str) -> list[dict[str, Any]]:
    """A sweep passed on a command line: a JSON list of objects of search knobs."""
    sweep = json.loads(text)
    if not isinstance(sweep, list) or not all(isinstance(p, dict) for p in sweep):
        raise ValueError(f"--sweep must be a JSON list of objects, got {text[:80]!r}")
    return sweep


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the given knob values, first axis varying slowest."""
    points: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        points = [{**p, name: v} for p in points for v in values]
    return points
