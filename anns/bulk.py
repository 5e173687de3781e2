"""Bulk build: a collection from a (possibly larger than RAM) matrix, in bounded memory.

Stages, each streaming over the memory-mapped input in chunks of ``CHUNK_BYTES``:

1. **train** on a sample: hierarchical balanced clustering places ~n / posting_size centroids,
   and the codec is fitted;
2. **assign**: every vector gets its postings (nearest centroid plus closure replicas filtered
   by the RNG rule); a posting whose own vectors exceed ``max_posting_size`` is split and the
   pass repeats;
3. **cap**: replicas beyond ``max_posting_size`` are dropped, farthest first;
4. **write**: full vectors and per-id records in input order, then postings in posting order,
   in large WriteBatches with the WAL off; the collection is marked ready only after a flush,
   so an interrupted build is detected on open (IncompleteBuildError).

What stays in RAM grows with the number of postings and with n * replica_cap small integers,
never with n * dim.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from anns.basis import Basis, fit_basis
from anns.config import IndexConfig, StorageConfig, validated
from anns.errors import DimensionMismatchError, DTypeError, InvalidArgumentError
from anns.formats import drop_resident_pages, open_ids, open_matrix
from anns.index import STATE_BUILDING, STATE_READY
from anns.memory import peak_rss_bytes, release_freed_heap, rss_bytes
from anns.quantization import make_codec
from anns.routing import Router, balanced_clusters
from anns.storage import Storage, encode_posting, encode_records
from anns.vectors import as_ids, as_vectors, check_storable, prefix

log = logging.getLogger(__name__)

#: Bytes of input vectors handled at once by the streaming passes.
CHUNK_BYTES = 16 << 20
#: Bytes of values put in one WriteBatch while writing.
BATCH_BYTES = 16 << 20
#: Assignment passes before oversized postings are left to the replica cap.
MAX_SPLIT_ROUNDS = 4


@dataclass(frozen=True)
class BuildSummary:
    """Figures of one bulk build (what ``anns build`` prints as one JSON line)."""

    n: int
    dim: int
    postings: int
    posting_len_min: int
    posting_len_median: float
    posting_len_max: int
    mean_replicas: float
    build_seconds: float
    peak_rss_mb: float
    disk_bytes: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def build(
    path: str | os.PathLike[str],
    vectors: Any,
    ids: Any = None,
    config: IndexConfig | dict[str, Any] | None = None,
    *,
    storage: StorageConfig | None = None,
    progress: bool = False,
) -> BuildSummary:
    """Build a collection at ``path`` (new or empty directory) from ``vectors``.

    ``vectors``: a float array [n, d] or the path of a .npy/.fvecs file (memory-mapped).
    ``ids``: int64 [n] array or .npy path; default: row numbers. ``config``: an IndexConfig or
    a dict of its fields (``dim`` is taken from the data). On any error the directory is
    removed again, so a failed build leaves nothing behind.
    """
    started = time.perf_counter()
    x = open_matrix(vectors) if isinstance(vectors, (str, os.PathLike)) else np.asarray(vectors)
    if x.ndim != 2:
        raise DimensionMismatchError(f"vectors must be a 2-D array [n, d], got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise DTypeError(f"vectors must be a float or integer array, got dtype {x.dtype}")
    n, dim = x.shape
    if n == 0:
        raise InvalidArgumentError("cannot build a collection from zero vectors")
    cfg = _resolve_config(config, dim)
    if ids is None:
        id_array = np.arange(n, dtype=np.int64)
    else:
        raw_ids = open_ids(ids) if isinstance(ids, (str, os.PathLike)) else ids
        id_array = as_ids(np.asarray(raw_ids), n)

    target = Path(path)
    existed = target.exists()
    store = Storage.create(target, storage or StorageConfig())
    try:
        summary = _Builder(store, cfg, x, id_array, progress).run(started)
    except BaseException:
        store.close()
        if existed:
            for child in target.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)
        raise
    store.close()
    return summary


def _is_run(rows: np.ndarray) -> bool:
    """True when sorted ``rows`` are consecutive (read as a slice, not a gather)."""
    return len(rows) > 0 and int(rows[-1]) - int(rows[0]) == len(rows) - 1


def _log_stage(stage: str, postings: int) -> None:
    release_freed_heap()  # each stage's buffers are gone: keep RSS at what the next one needs
    log.info(
        "build: %s (%d postings); RSS %.0f MiB, peak %.0f MiB", stage, postings,
        rss_bytes() / 2**20, peak_rss_bytes() / 2**20,
    )


def _resolve_config(config: IndexConfig | dict[str, Any] | None, dim: int) -> IndexConfig:
    if isinstance(config, IndexConfig):
        if config.dim != dim:
            raise DimensionMismatchError(f"config dim {config.dim} does not match data dim {dim}")
        return config
    fields = dict(config or {})
    if fields.get("dim", dim) != dim:
        raise DimensionMismatchError(f"config dim {fields['dim']} does not match data dim {dim}")
    fields["dim"] = dim
    return validated(IndexConfig, **fields)


class _Builder:
    def __init__(
        self, store: Storage, cfg: IndexConfig, x: np.ndarray, ids: np.ndarray, progress: bool,
        version: int = 0,
    ) -> None:
        self.store, self.cfg, self.x, self.ids = store, cfg, x, ids
        self.version = version  # the model version index the vectors are stored under
        self.n, self.dim = x.shape
        self.chunk = max(1, CHUNK_BYTES // (4 * self.dim))
        # None lets tqdm draw only on a terminal: piped stderr (logs, CI) gets no bar frames
        self._bar_off: bool | None = None if progress else True
        self._unflushed = 0
        self.basis: Basis | None = None  # fitted in _train; from then on _rows applies it
        # the base model's vectors are stored as given (one byte a dim), not in the basis
        self.raw = cfg.vector_dtype != "float32" and version == 0

    def run(self, started: float) -> BuildSummary:
        cfg = self.cfg
        marker = self.store.batch()
        marker.put_meta("state", STATE_BUILDING)
        marker.put_meta("config", cfg.model_dump_json().encode())
        self.store.write(marker, sync=True)
        self.store.set_auto_compaction(False)

        router, codec = self._train()
        _log_stage("trained", router.size)
        rep, dist, router = self._assign(router)
        _log_stage("assigned", router.size)
        posting, row = self._cap(rep, dist)
        del rep, dist
        posting, router = self._drop_empty(posting, router)
        self._write_vectors_and_records(posting, row)
        _log_stage("wrote vectors", router.size)
        lengths = self._write_postings(posting, row, codec, router.size)
        _log_stage("wrote postings", router.size)

        meta = self.store.batch()
        assert self.basis is not None
        meta.put_meta("basis", self.basis.to_bytes())
        meta.put_meta("router", router.to_bytes())
        meta.put_meta("codec", codec.to_bytes())
        meta.put_meta("count", str(self.n).encode())
        meta.put_meta("entries", str(len(posting)).encode())
        meta.put_meta("next_id", str(int(self.ids.max()) + 1).encode())
        self.store.write(meta, sync=True)
        self.store.flush()
        self.store.compact()
        self.store.set_auto_compaction(True)
        summary = BuildSummary(
            n=self.n,
            dim=self.dim,
            postings=router.size,
            posting_len_min=int(lengths.min()),
            posting_len_median=float(np.median(lengths)),
            posting_len_max=int(lengths.max()),
            mean_replicas=round(len(posting) / self.n, 4),
            build_seconds=round(time.perf_counter() - started, 3),
            peak_rss_mb=round(peak_rss_bytes() / 2**20, 1),
            disk_bytes=self.store.disk_bytes(),
        )
        done = self.store.batch()
        done.put_meta("build_summary", summary.to_json().encode())
        done.put_meta("state", STATE_READY)
        self.store.write(done, sync=True)
        return summary

    # ------------------------------------------------------------------------- stages
    def _chunks(self, desc: str, *, as_given: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Validated float32 chunks (normalised for cosine) with their start row, in the
        collection basis once it is fitted unless ``as_given``."""
        with tqdm(
            total=self.n, desc=desc, unit="vec", unit_scale=True, disable=self._bar_off,
            leave=False,
        ) as bar:  # closed (line cleared) also when a chunk is invalid or the consumer fails
            for s in range(0, self.n, self.chunk):
                block = self._rows(slice(s, s + self.chunk), as_given=as_given)
                yield s, block
                bar.update(len(block))

    def _bulk_write(self, batch: Any) -> None:
        """Write without the WAL and flush memtables every BATCH_BYTES: bulk writes outpace
        background flushes, and memtables waiting for one would otherwise pile up in RAM."""
        self.store.write(batch, wal=False)
        self._unflushed += batch.bytes
        if self._unflushed >= BATCH_BYTES:
            self.store.flush()
            release_freed_heap()  # the flushed memtable's arena
            self._unflushed = 0

    def _rows(self, which: slice | np.ndarray, *, as_given: bool = False) -> np.ndarray:
        """Validated float32 copy of some input rows (normalised for cosine), in the
        collection basis once it is fitted unless ``as_given``; the input's pages are dropped
        from RSS afterwards, so memory stays bounded by the copies."""
        rows = np.arange(*which.indices(self.n)) if isinstance(which, slice) else which
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for s in range(0, len(rows), self.chunk):  # bounded reads of the mapping at a time
            part = rows[s : s + self.chunk]
            src = self.x[part[0] : part[-1] + 1] if _is_run(part) else self.x[part]
            out[s : s + len(part)] = as_vectors(src, self.dim, metric=self.cfg.metric, rows=part)
            drop_resident_pages(self.x)
        return out if self.basis is None or as_given else self.basis.apply_in_place(out)

    def _train(self) -> tuple[Router, Any]:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        size = min(self.n, max(1, int(cfg.train_sample_mb * (1 << 20) / (4 * self.dim))))
        rows = np.sort(rng.choice(self.n, size, replace=False)) if size < self.n else None
        sample = self._rows(rows if rows is not None else slice(0, self.n))
        if self.raw:  # fail at once on most bad inputs; the write checks every row
            check_storable(sample, cfg.vector_dtype, rows=rows, convert=False)
        self.basis = fit_basis(sample, cfg)
        sample = self.basis.apply_in_place(sample)  # the sample is this build's own array
        log.info(
            "basis %s: the first %d dims (d_route) keep %.1f%% of the energy, %d (d_scan) %.1f%%",
            self.basis.kind, cfg.route_dims, 100 * self.basis.prefix_energy(cfg.route_dims),
            cfg.scan_dims, 100 * self.basis.prefix_energy(cfg.scan_dims),
        )
        # leaves of the sample scaled so that each holds ~posting_size vectors of the whole
        leaf = max(1, round(cfg.posting_size * size / self.n))
        log.info("clustering a sample of %d vectors into leaves of %d", size, leaf)
        centroids, _ = balanced_clusters(
            prefix(sample, cfg.route_dims), leaf, iters=cfg.kmeans_iters, seed=cfg.seed
        )
        codec = make_codec(cfg.codec, cfg.scan_dims, cfg.metric, cfg.pq_m,
                           full_dim=cfg.dim, tail_norms=cfg.tail_norms)
        codec.train(sample)  # it trains on at most CODEC_TRAIN_ROWS of them
        return Router(centroids, cfg.centroid_index, cfg.hnsw_threshold), codec

    def _assign(self, router: Router) -> tuple[np.ndarray, np.ndarray, Router]:
        """Postings of every vector; splits postings whose own vectors exceed the cap."""
        cfg = self.cfg
        for round_ in range(MAX_SPLIT_ROUNDS):
            rep = np.empty((self.n, cfg.replica_cap), dtype=np.int32)
            dist = np.empty((self.n, cfg.replica_cap), dtype=np.float32)
            for s, block in self._chunks(f"assign {round_ + 1}"):
                r, d = router.replicas(prefix(block, cfg.route_dims), cfg.replica_cap, cfg.eps1)
                rep[s : s + len(block)] = r
                dist[s : s + len(block)] = d
            primaries = np.bincount(rep[:, 0], minlength=router.size)
            over = np.flatnonzero(primaries > cfg.max_posting_size)
            if not len(over):
                return rep, dist, router
            if round_ == MAX_SPLIT_ROUNDS - 1:
                # still over after the rounds: vectors so alike (duplicates) that split
                # centroids draw them all back; deal them out instead (as an insert's split does)
                return self._deal_out(router, rep, dist, over)
            router = self._split(router, rep[:, 0], over)
        raise AssertionError("unreachable")

    def _deal_out(
        self, router: Router, rep: np.ndarray, dist: np.ndarray, over: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, Router]:
        """Postings over the cap split by the balanced clustering's labels of their vectors
        (each leaf holds at most posting_size, whatever their distances) rather than by
        nearest centroid: each vector's primary is its own leaf's centroid."""
        cfg = self.cfg
        replaced: dict[int, np.ndarray] = {}
        added: list[np.ndarray] = []
        next_pid = router.size
        for pid in over.tolist():
            rows = np.flatnonzero(rep[:, 0] == pid)
            members = prefix(self._rows(rows), cfg.route_dims)
            centroids, labels = balanced_clusters(
                members, cfg.posting_size, iters=cfg.kmeans_iters, seed=cfg.seed + pid)
            primary = np.where(labels == 0, pid, next_pid + labels - 1)
            rep[rows, 0] = primary
            dist[rows, 0] = np.sqrt(((members - centroids[labels]) ** 2).sum(axis=1))
            replaced[pid] = centroids[0]
            added.extend(centroids[1:])
            next_pid += len(centroids) - 1
        log.info("dealt %d postings of near-identical vectors out into %d", len(over),
                 len(over) + len(added))
        extra = np.array(added, dtype=np.float32).reshape(-1, cfg.route_dims)
        return rep, dist, router.with_centroids(replaced, extra)

    def _split(self, router: Router, primary: np.ndarray, over: np.ndarray) -> Router:
        cfg = self.cfg
        replaced: dict[int, np.ndarray] = {}
        added: list[np.ndarray] = []
        for pid in over.tolist():
            rows = np.flatnonzero(primary == pid)
            members = prefix(self._rows(rows), cfg.route_dims)
            centroids, _ = balanced_clusters(
                members, cfg.posting_size, iters=cfg.kmeans_iters,
                seed=cfg.seed + pid,
            )
            replaced[pid] = centroids[0]
            added.extend(centroids[1:])
        log.info("split %d oversized postings into %d", len(over), len(over) + len(added))
        extra = np.array(added, dtype=np.float32).reshape(-1, cfg.route_dims)
        return router.with_centroids(replaced, extra)

    def _cap(self, rep: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(posting, row) entries after the per-posting cap, sorted by posting then row order
        of preference (primaries first, then replicas nearest first)."""
        rows, slots = np.nonzero(rep >= 0)
        posting = rep[rows, slots].astype(np.int64)
        order = np.lexsort((dist[rows, slots], slots > 0, posting))
        posting, rows, slots = posting[order], rows[order], slots[order]
        starts = np.searchsorted(posting, posting)  # first entry of each entry's posting
        rank = np.arange(len(posting)) - starts
        keep = (rank < self.cfg.max_posting_size) | (slots == 0)
        return posting[keep], rows[keep]

    @staticmethod
    def _drop_empty(posting: np.ndarray, router: Router) -> tuple[np.ndarray, Router]:
        """Remove centroids that no vector chose (they would only cost probes); renumber."""
        used = np.unique(posting)
        if len(used) == router.size:
            return posting, router
        renumber = np.full(router.size, -1, dtype=np.int64)
        renumber[used] = np.arange(len(used))
        log.info("dropping %d empty postings", router.size - len(used))
        return renumber[posting], Router(router.centroids[used], router.kind, router.hnsw_threshold)

    def _write_vectors_and_records(self, posting: np.ndarray, row: np.ndarray) -> None:
        by_row = np.argsort(row, kind="stable")
        held = posting[by_row]
        bounds = np.searchsorted(row[by_row], np.arange(self.n + 1))
        counts = np.diff(bounds)
        width = max(1, int(counts.max(initial=0)))
        batch, pending = self.store.batch(), 0
        for s, block in self._chunks("write vectors", as_given=self.raw):
            ids = self.ids[s : s + len(block)]
            stored = block if not self.raw else check_storable(
                block, self.cfg.vector_dtype, rows=np.arange(s, s + len(block)))
            batch.put_vectors(ids, stored, self.version)
            # the chunk's postings per row, -1 padded: every record encoded at once
            c = counts[s : s + len(block)]
            a = int(bounds[s])
            slot = np.arange(int(c.sum())) - np.repeat(bounds[s : s + len(block)] - a, c)
            pids = np.full((len(block), width), -1, dtype=np.int64)
            pids[np.repeat(np.arange(len(block)), c), slot] = held[a : a + int(c.sum())]
            batch.put_records(ids, encode_records(pids, version=self.version))
            pending += stored.nbytes
            if pending >= BATCH_BYTES:
                self._bulk_write(batch)
                batch, pending = self.store.batch(), 0
        self._bulk_write(batch)

    def _write_postings(
        self, posting: np.ndarray, row: np.ndarray, codec: Any, n_postings: int
    ) -> np.ndarray:
        """Encode and write every posting; returns the length of each posting."""
        lengths = np.bincount(posting, minlength=n_postings)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        # postings grouped so that the rows gathered for one group stay near CHUNK_BYTES
        per_group = max(1, self.chunk)
        with tqdm(total=len(posting), desc="write postings", unit="vec", unit_scale=True,
                  disable=self._bar_off, leave=False) as bar:
            pid = 0
            while pid < n_postings:
                last = int(np.searchsorted(ends, starts[pid] + per_group, side="left"))
                last = min(max(last, pid + 1), n_postings)
                a, b = int(starts[pid]), int(ends[last - 1])
                rows = row[a:b]
                uniq, inverse = np.unique(rows, return_inverse=True)
                codes = codec.encode(self._rows(uniq))[inverse]
                entry_ids = self.ids[rows]
                batch = self.store.batch()
                for p in range(pid, last):
                    s, e = int(starts[p]) - a, int(ends[p]) - a
                    batch.put_posting(p, encode_posting(entry_ids[s:e], codes[s:e]))
                self._bulk_write(batch)
                bar.update(b - a)
                pid = last
        return lengths
