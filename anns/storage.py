"""The only module that knows the RocksDB layout of a collection.

One collection is one directory holding one RocksDB database (through rocksdict, raw bytes)
with four column families:

==========  ===================  ==========================================================
family      key                  value
==========  ===================  ==========================================================
postings    posting id, u32 BE   ids int64 LE [m] then codes uint8 [m, code_size]
vectors     vector id, i64 BE    the full vector in collection space, float32 LE [w], then
                                 for a model version other than the base its index, u32 LE;
                                 or (integer ``vector_dtype``) a base vector as given, [dim]
records     vector id, i64 BE    flags u8 (bit 0: tombstone; bits 1-7: model version index)
                                 then posting ids u32 LE [r]
meta        ascii name           format version, index config, basis, router, codec, counters,
                                 model versions (``models`` JSON, ``model/<name>`` transforms)
==========  ===================  ==========================================================

Format versions: 1 stored raw vectors and had no basis; 2 stores vectors (and centroids,
codes) in the collection basis (``meta/basis``); 3 adds model versions: a vector of the base
model is ``w = dim`` floats exactly as in format 2, one of another version is its ``w >= dim``
floats (see :mod:`anns.models`) followed by the version's index, so the length alone tells the
two apart and a base-only collection is byte-for-byte a format-2 one. 4 lets the codec
(``meta/codec``) carry tail norms: its blob then starts with the tail header of
:class:`~anns.quantization.TailCodec`, and every code ends in two bytes of tail norm; a
collection whose codes hold no tail is byte-for-byte a format-3 one. 5 lets the base model's
vectors be stored as given, one byte a dim (``IndexConfig.vector_dtype`` ``uint8``/``int8``:
a blob of exactly ``dim`` bytes); a float32 collection is byte-for-byte a format-4 one. Older
versions still open
(every vector of the base model); registering a model version, re-encoding the postings
(``recode``) or rebasing upgrades them to the current version.

Big-endian ids keep keys in numeric order. Every write of one library call goes through one
:class:`Batch`, written as one atomic RocksDB WriteBatch: a call is durable entirely or not at
all.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import shutil
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rocksdict

from anns.config import StorageConfig
from anns.memory import configure_malloc
from anns.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptCollectionError,
    FormatVersionError,
)

log = logging.getLogger(__name__)

#: Bumped whenever the layout above changes meaning. New collections are written in
#: FORMAT_VERSION; any of READABLE_FORMATS opens; another is refused with both named.
FORMAT_VERSION = 5
READABLE_FORMATS = (1, 2, 3, 4, 5)

POSTINGS, VECTORS, RECORDS, META = "postings", "vectors", "records", "meta"
_FAMILIES = (POSTINGS, VECTORS, RECORDS, META)
#: The small file naming the format that makes a directory a collection, checked before
#: RocksDB opens (the server also lists collections by it).
COLLECTION_MARKER = "ANNS_COLLECTION"

TOMBSTONE = 1
#: Most model versions one collection can ever register (7 bits of the record flags).
MAX_MODEL_VERSIONS = 127
#: Memory all memtables of one collection may hold before RocksDB flushes them.
_MEMTABLE_BYTES = 32 << 20
#: Keys each thread of a split multi-get reads at least (see Storage._multi_get).
_MIN_KEYS_PER_THREAD = 1


def id_keys(ids: np.ndarray) -> list[bytes]:
    """Keys of the vectors/records families for int64 ``ids`` (8-byte big-endian)."""
    return np.ascontiguousarray(ids, dtype=">i8").view("V8").tolist()  # type: ignore[no-any-return]


def posting_keys(pids: np.ndarray) -> list[bytes]:
    """Keys of the postings family for posting ids (4-byte big-endian)."""
    return np.ascontiguousarray(pids, dtype=">u4").view("V4").tolist()  # type: ignore[no-any-return]


def _decode_vectors(
    keys: list[bytes], values: list[bytes], dim: int, dtype: str, full_width: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.frombuffer(b"".join(keys), dtype=">i8").astype(np.int64)
    rows, versions = decode_vectors(values, dim, dtype)
    return ids, rows if full_width else np.ascontiguousarray(rows[:, :dim]), versions


def decode_vectors(
    blobs: list[bytes], dim: int, dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors (none None) -> (float32 [n, w_max] zero-padded past each vector's own
    width, model version index int64 [n]). ``dim`` is the base width: a blob of exactly
    ``4 * dim`` bytes is a base vector in the collection basis; with an integer ``dtype``
    (``IndexConfig.vector_dtype``) a blob of ``dim`` bytes is a base vector *as given* (raw,
    not in the basis: the caller maps it). One join and reshape per distinct length."""
    n = len(blobs)
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    raw = dtype != "float32"
    if n and raw and (lengths == dim).all():  # an integer collection's base vectors
        joined = b"".join(blobs)
        rows = np.frombuffer(joined, dtype=dtype).reshape(n, dim).astype(np.float32)
        return rows, np.zeros(n, np.int64)
    if n == 0 or (lengths == 4 * dim).all():  # base model only: one join, no grouping
        joined = b"".join(blobs)
        return np.frombuffer(joined, dtype="<f4").reshape(n, dim), np.zeros(n, np.int64)
    base = (lengths == 4 * dim) | (raw & (lengths == dim))
    widths = np.where(base, dim, lengths // 4 - 1)
    out = np.zeros((n, int(widths.max())), dtype=np.float32)
    versions = np.zeros(n, dtype=np.int64)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        joined = b"".join([blobs[i] for i in rows.tolist()])
        if raw and length == dim:
            out[rows, :dim] = np.frombuffer(joined, dtype=dtype).reshape(len(rows), dim)
            continue
        block = np.frombuffer(joined, dtype="<f4")
        if length == 4 * dim:
            out[rows, :dim] = block.reshape(len(rows), dim)
        else:
            block = block.reshape(len(rows), length // 4)
            out[rows, : length // 4 - 1] = block[:, :-1]
            versions[rows] = block[:, -1].view("<u4")
    return out, versions


def encode_posting(ids: np.ndarray, codes: np.ndarray) -> bytes:
    """Serialise one posting: int64 ids [m] followed by uint8 codes [m, code_size]."""
    return np.ascontiguousarray(ids, dtype="<i8").tobytes() + np.ascontiguousarray(codes).tobytes()


def decode_posting(blob: bytes, code_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_posting`: (ids int64 [m], codes uint8 [m, code_size])."""
    m = len(blob) // (8 + code_size)
    ids = np.frombuffer(blob, dtype="<i8", count=m)
    codes = np.frombuffer(blob, dtype=np.uint8, offset=8 * m).reshape(m, code_size)
    return ids, codes


def encode_record(pids: np.ndarray, flags: int = 0, version: int = 0) -> bytes:
    """Serialise one per-id record: flags byte (tombstone bit, model version index above
    it), then the posting ids holding the vector."""
    return bytes([(flags & TOMBSTONE) | (version << 1)]) + np.ascontiguousarray(
        pids, dtype="<u4").tobytes()


def decode_record(blob: bytes) -> tuple[int, np.ndarray]:
    """Inverse of :func:`encode_record`: (flags, posting ids int64); see
    :func:`record_version` for the model version."""
    return blob[0] & TOMBSTONE, np.frombuffer(blob, dtype="<u4", offset=1).astype(np.int64)


def record_version(blob: bytes) -> int:
    """The model version index a record's vector was stored under (0: the base model)."""
    return blob[0] >> 1


def encode_records(pids: np.ndarray, flags: int = 0, version: int = 0) -> list[bytes]:
    """:func:`encode_record` of every row of ``pids`` int [n, r] (-1: no posting, anywhere
    in a row; the others are kept in row order), all with the same flags and version.

    Rows are grouped by their number of postings (at most r + 1 groups): each group is one
    uint8 matrix whose rows become ``bytes`` in one call, not one encode per record."""
    n, r = pids.shape
    held = pids >= 0
    counts = held.sum(axis=1)
    # a stable sort on "not held" moves a row's postings to its front, in their order
    packed = np.take_along_axis(pids, np.argsort(~held, axis=1, kind="stable"), axis=1)
    rows = np.empty((n, 1 + 4 * r), dtype=np.uint8)
    rows[:, 0] = (flags & TOMBSTONE) | (version << 1)
    rows[:, 1:] = packed.astype("<u4").view(np.uint8).reshape(n, 4 * r)
    out = np.empty(n, dtype=object)
    for c in np.unique(counts).tolist():
        group = np.flatnonzero(counts == c)
        width = 1 + 4 * c
        out[group] = np.ascontiguousarray(rows[group, :width]).view(f"V{width}").ravel()
    blobs: list[bytes] = out.tolist()
    return blobs


def decode_records(
    blobs: list[bytes | None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`decode_record` and :func:`record_version` of n records at once (None: no
    record): (flags int64 [n], -1 where there is no record; model version index int64 [n],
    0 there; posting ids int64 [total] of all records in order; their count int64 [n]).
    Record i holds ``pids[offsets[i] : offsets[i] + counts[i]]``, offsets the exclusive
    cumulative sum of counts. One join and one mask over all records, whatever n."""
    n = len(blobs)
    filled = [b or b"" for b in blobs]
    lengths = np.fromiter(map(len, filled), dtype=np.int64, count=n)
    joined = np.frombuffer(b"".join(filled), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    stored = lengths > 0
    if ((lengths[stored] - 1) % 4).any():
        bad = int(np.flatnonzero(stored & ((lengths - 1) % 4 != 0))[0])
        raise CorruptCollectionError(
            f"a per-id record of {int(lengths[bad])} bytes is not a flags byte and u32 "
            f"posting ids")
    head = joined[starts[stored]].astype(np.int64)
    flags = np.full(n, -1, dtype=np.int64)
    versions = np.zeros(n, dtype=np.int64)
    flags[stored] = head & TOMBSTONE
    versions[stored] = head >> 1
    body = np.ones(len(joined), dtype=bool)
    body[starts[stored]] = False  # what is left is every record's u32 posting ids, in order
    pids = np.frombuffer(joined[body].tobytes(), dtype="<u4").astype(np.int64)
    counts = np.where(stored, (lengths - 1) // 4, 0)
    return flags, versions, pids, counts


@dataclass
class Batch:
    """The writes of one call, applied atomically by :meth:`Storage.write`."""

    storage: Storage

    def __post_init__(self) -> None:
        self._wb = rocksdict.WriteBatch(raw_mode=True)
        self.puts = 0
        self.bytes = 0

    def put_posting(self, pid: int, blob: bytes) -> None:
        self._wb.put(int(pid).to_bytes(4, "big"), blob, self.storage._handles[POSTINGS])
        self.puts += 1
        self.bytes += len(blob)

    def delete_posting(self, pid: int) -> None:
        self._wb.delete(int(pid).to_bytes(4, "big"), self.storage._handles[POSTINGS])

    def put_vectors(self, ids: np.ndarray, vectors: np.ndarray, version: int = 0) -> None:
        """Full vectors [n, w] of one model version (0: the base model, no trailer): float32
        in the collection basis, or for the base model of an integer ``vector_dtype`` its
        uint8/int8 vectors as given."""
        h = self.storage._handles[VECTORS]
        if vectors.dtype in (np.uint8, np.int8):
            if version:
                raise ValueError("only the base model's vectors are stored as integers")
            rows = np.ascontiguousarray(vectors)
        else:
            rows = np.ascontiguousarray(vectors, dtype="<f4")
        if version:
            tail = np.full((len(rows), 1), version, dtype="<u4").view("<f4")
            rows = np.ascontiguousarray(np.hstack([rows, tail]))
        # every row's bytes in one call, not a tobytes() per row
        blobs = rows.view(f"V{rows.shape[1] * rows.itemsize}").ravel().tolist() if rows.size else []
        for key, blob in zip(id_keys(ids), blobs):
            self._wb.put(key, blob, h)
        self.puts += len(rows)
        self.bytes += rows.nbytes

    def delete_vectors(self, ids: np.ndarray) -> None:
        h = self.storage._handles[VECTORS]
        for key in id_keys(ids):
            self._wb.delete(key, h)

    def put_record(self, vid: int, blob: bytes) -> None:
        self._wb.put(int(vid).to_bytes(8, "big"), blob, self.storage._handles[RECORDS])
        self.puts += 1

    def put_records(self, ids: np.ndarray, blobs: list[bytes]) -> None:
        """The records ``blobs`` (see :func:`encode_records`) of vectors ``ids`` [n]."""
        h = self.storage._handles[RECORDS]
        for key, blob in zip(id_keys(ids), blobs):
            self._wb.put(key, blob, h)
        self.puts += len(blobs)

    def put_meta(self, name: str, value: bytes) -> None:
        self._wb.put(name.encode(), value, self.storage._handles[META])

    def delete_meta(self, name: str) -> None:
        self._wb.delete(name.encode(), self.storage._handles[META])


class Storage:
    """A collection's RocksDB database. Thread-safe for reads; writers serialise themselves."""

    def __init__(self, path: Path, db: rocksdict.Rdict, config: StorageConfig) -> None:
        self.path = path
        self.config = config
        self._db = db
        self._cfs = {name: db.get_column_family(name) for name in _FAMILIES}
        self._handles = {name: db.get_column_family_handle(name) for name in _FAMILIES}
        self._pool: _ReadThreads | None = None
        # only postings are probed: full vectors never enter the cache (_uncached_table)
        self._odds = {POSTINGS: _CacheOdds()}
        self._pool_lock = threading.Lock()
        self.format_version = FORMAT_VERSION
        """On-disk format of this collection (older ones open too, see READABLE_FORMATS)."""

    # ----------------------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike[str], config: StorageConfig) -> Storage:
        """Create an empty collection directory; refuses a directory that holds one already."""
        p = Path(path)
        if (p / COLLECTION_MARKER).exists():
            raise CollectionExistsError(f"a collection already exists at {p}")
        if p.exists() and any(p.iterdir()):
            raise CollectionExistsError(f"{p} exists and is not empty; refusing to use it")
        p.mkdir(parents=True, exist_ok=True)
        (p / COLLECTION_MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION}) + "\n")
        storage = cls(p, cls._open_db(p, config, create=True), config)
        batch = storage.batch()
        batch.put_meta("format_version", str(FORMAT_VERSION).encode())
        storage.write(batch)
        return storage

    @classmethod
    def open(cls, path: str | os.PathLike[str], config: StorageConfig) -> Storage:
        """Open an existing collection, checking its format version before anything else."""
        p = Path(path)
        if not p.is_dir():
            raise CollectionNotFoundError(f"no collection at {p}: directory does not exist")
        marker = p / COLLECTION_MARKER
        if not marker.is_file():
            raise CollectionNotFoundError(
                f"no collection at {p}: {COLLECTION_MARKER} file is missing"
            )
        try:
            found = int(json.loads(marker.read_text())["format_version"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptCollectionError(f"{marker} is unreadable: {e}") from e
        readable = ", ".join(str(v) for v in READABLE_FORMATS)
        if found not in READABLE_FORMATS:
            raise FormatVersionError(
                f"collection at {p} has on-disk format version {found}; this anns reads "
                f"format versions {readable}"
            )
        storage = cls(p, cls._open_db(p, config, create=False), config)
        stored = storage.get_meta("format_version")
        if stored is not None and int(stored) in READABLE_FORMATS and int(stored) > found:
            # an upgrade (registering a model version) stopped before rewriting the marker
            if not config.read_only:
                _write_marker(p, int(stored))
            found = int(stored)
        if stored is None or int(stored) != found:
            storage.close()
            raise FormatVersionError(
                f"collection at {p} has on-disk format version "
                f"{stored.decode() if stored else 'none'} (marker file: {found}); this anns "
                f"reads format versions {readable}"
            )
        storage.format_version = found
        return storage

    def upgrade_format(self, batch: Batch) -> None:
        """Record, in ``batch``, that the collection is now FORMAT_VERSION; call
        :meth:`upgraded` after writing it. A crash between the two leaves the marker behind
        the stored version, which :meth:`open` completes."""
        batch.put_meta("format_version", str(FORMAT_VERSION).encode())

    def upgraded(self) -> None:
        self.format_version = FORMAT_VERSION
        _write_marker(self.path, FORMAT_VERSION)

    @staticmethod
    def _open_db(p: Path, config: StorageConfig, *, create: bool) -> rocksdict.Rdict:
        configure_malloc()  # before RocksDB and the I/O pool start their threads
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(create)
        opts.create_missing_column_families(create)
        cache = rocksdict.Cache(config.block_cache_bytes) if config.block_cache_bytes > 0 else None
        table = _cached_table(cache)
        opts.set_block_based_table_factory(table)
        opts.set_use_direct_reads(config.direct_reads)
        opts.set_max_open_files(256)
        opts.set_write_buffer_size(16 << 20)
        # all memtables of the collection together stay under this (bounded write memory)
        opts.set_write_buffer_manager(rocksdict.WriteBufferManager(_MEMTABLE_BYTES, False))
        opts.set_max_background_jobs(2)
        families = {name: _family_options(table) for name in _FAMILIES}
        families[POSTINGS] = _family_options(_cached_table(cache, POINT_BLOCK_BYTES))
        families[VECTORS] = _family_options(_uncached_table())
        access = (
            rocksdict.AccessType.read_only() if config.read_only else rocksdict.AccessType.read_write()
        )
        try:
            return rocksdict.Rdict(
                str(p), opts, column_families=families, access_type=access
            )
        except Exception as e:  # rocksdict raises bare Exception for every RocksDB status
            raise CorruptCollectionError(f"cannot open the database of collection {p}: {e}") from e

    def close(self) -> None:
        """Flush memtables and close the database (idempotent)."""
        if self._db is None:
            return
        if self._pool is not None:
            self._pool.shutdown()
        if not self.config.read_only:
            self.flush()
        # every column-family handle shares the database: drop them all, or the RocksDB lock
        # outlives close() and the collection cannot be opened again in this process
        self._cfs.clear()
        self._handles.clear()
        self._db.close()
        self._db = None  # type: ignore[assignment]

    @staticmethod
    def destroy(path: str | os.PathLike[str]) -> None:
        """Delete a collection directory (only one that carries the collection marker)."""
        p = Path(path)
        if not (p / COLLECTION_MARKER).is_file():
            raise CollectionNotFoundError(f"no collection at {p}")
        shutil.rmtree(p)

    # ---------------------------------------------------------------------------- reads
    def get_meta(self, name: str) -> bytes | None:
        value = self._cfs[META].get(name.encode())
        return value if value is None else bytes(value)

    def get_postings(self, pids: np.ndarray) -> list[bytes | None]:
        """One multi-get of the given postings; None where a posting does not exist."""
        return self._multi_get(POSTINGS, posting_keys(pids))

    def get_vectors(self, ids: np.ndarray) -> list[bytes | None]:
        """One multi-get of full vectors; None where an id is not stored."""
        return self._multi_get(VECTORS, id_keys(ids))

    def get_records(self, ids: np.ndarray) -> list[bytes | None]:
        """One multi-get of per-id records; None where an id was never stored."""
        return self._multi_get(RECORDS, id_keys(ids))

    def _multi_get(self, family: str, keys: list[bytes]) -> list[bytes | None]:
        """A multi-get, split over the I/O threads when it needs more than one read.

        RocksDB's MultiGet issues its reads one after another here (no io_uring), so one call
        waits for each read in turn; rocksdict releases the GIL inside a list get, so parts
        of one multi-get run concurrently and keep several reads in flight, which is what an
        SSD (or a virtual disk) needs to reach its throughput. The calling thread reads
        parts too.

        Before splitting, the postings the memtable or block cache hold are taken without a
        read (RocksDB's KeyMayExist, ~1 us a key), with the keys its filters rule out: a
        cache hit handed to a thread costs far more than the hit itself (30 cached values:
        80 us read here, 210 us through the threads). While the cache rarely holds them the
        probe is mostly skipped (:class:`_CacheOdds`). Full vectors bypass the cache, so
        their keys are never probed (a Python call per rerank candidate for nothing).
        """
        cf = self._cfs[family]
        odds = self._odds.get(family)
        if odds is None or len(keys) < 2 or not odds.worth_probing():
            return self._split_get(cf, keys)
        out, misses = self._cached(cf, keys)
        odds.record(len(keys), len(keys) - len(misses))
        if misses:
            values = self._split_get(cf, [keys[i] for i in misses])
            for i, value in zip(misses, values):
                out[i] = value
        return out

    def _split_get(self, cf: rocksdict.Rdict, keys: list[bytes]) -> list[bytes | None]:
        parts = min(self.config.io_threads, len(keys) // _MIN_KEYS_PER_THREAD)
        if parts <= 1:
            return cf.get(keys)  # type: ignore[no-any-return]
        step = -(-len(keys) // parts)
        chunks = [keys[i : i + step] for i in range(0, len(keys), step)]
        # the threads start from the first part, this thread from the last
        calls = self._io_pool().start(cf.get, chunks, keep=1)
        return [value for part in calls.result() for value in part]

    @staticmethod
    def _cached(cf: rocksdict.Rdict, keys: list[bytes]) -> tuple[list[bytes | None], list[int]]:
        """(values found without I/O, None elsewhere; positions still to read)."""
        out: list[bytes | None] = [None] * len(keys)
        misses: list[int] = []
        for i, key in enumerate(keys):
            may_exist, value = cf.key_may_exist(key, True)
            if value:  # rocksdict gives b"" when the value is not cached: read those
                out[i] = value
            elif may_exist:
                misses.append(i)
        return out, misses

    def _io_pool(self) -> _ReadThreads:
        with self._pool_lock:
            if self._pool is None:
                self._pool = _ReadThreads(self.config.io_threads - 1, "anns-io")
                # a storage dropped without close() stops its threads too
                weakref.finalize(self, self._pool.stop)
            return self._pool

    def iter_vectors(
        self, dim: int, dtype: str = "float32", chunk: int = 4096, *, full_width: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every stored vector in id order, in chunks: (ids int64 [m], float32 [m, dim], model
        version index int64 [m]), the first ``dim`` floats as :func:`decode_vectors` gives
        them (raw base vectors of an integer ``dtype``); with ``full_width``, every version's
        whole stored form, zero-padded to the chunk's widest."""
        keys: list[bytes] = []
        values: list[bytes] = []
        for key, value in self._cfs[VECTORS].items():
            keys.append(bytes(key))
            values.append(bytes(value))
            if len(keys) == chunk:
                yield _decode_vectors(keys, values, dim, dtype, full_width)
                keys, values = [], []
        if keys:
            yield _decode_vectors(keys, values, dim, dtype, full_width)

    def vector_ids(self) -> np.ndarray:
        """Ids of every stored vector, ascending (reads keys only)."""
        keys = b"".join(bytes(key) for key in self._cfs[VECTORS].keys())
        return np.frombuffer(keys, dtype=">i8").astype(np.int64)

    def iter_postings(self) -> Any:
        """Iterate (posting key, blob) over every posting, in posting-id order."""
        return self._cfs[POSTINGS].items()

    # --------------------------------------------------------------------------- writes
    def batch(self) -> Batch:
        return Batch(self)

    def write(self, batch: Batch, *, sync: bool = False, wal: bool = True) -> None:
        """Apply a batch atomically.

        With ``sync`` the WAL is fsynced before returning (durable across power loss; without
        it a returned write survives a killed process). ``wal=False`` is for bulk builds only,
        whose readiness marker is written after a flush.
        """
        opts = rocksdict.WriteOptions()
        opts.sync = sync
        opts.disable_wal = not wal
        self._db.write(batch._wb, opts)

    def flush(self) -> None:
        """Flush the memtables of every column family (rocksdict's flush is per family)."""
        for cf in self._cfs.values():
            cf.flush()

    def set_auto_compaction(self, enabled: bool) -> None:
        """Turn background compaction on or off (off during a bulk load, which compacts once
        at its end instead of repeatedly merging the files it is still writing)."""
        value = "false" if enabled else "true"
        for cf in self._cfs.values():
            cf.set_options({"disable_auto_compactions": value})

    def compact(self) -> None:
        """Compact every column family (after a bulk load: fewer, sorted files to read)."""
        for cf in self._cfs.values():
            cf.compact_range(None, None)

    # --------------------------------------------------------------------------- figures
    def disk_bytes(self) -> int:
        """Bytes the collection directory occupies on disk."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def block_cache_usage(self) -> int:
        value = self._db.property_int_value("rocksdb.block-cache-usage")
        return int(value or 0)

    def memory_usage(self) -> dict[str, int]:
        """Bytes RocksDB holds in memory for this collection: ``block_cache`` (data, index and
        filter blocks of every family but vectors; at most ``block_cache_bytes``),
        ``table_readers`` (what open SST files hold outside the cache: the vectors family's
        index and filter blocks) and ``memtables`` (writes not yet flushed)."""
        readers = memtables = 0
        for cf in self._cfs.values():
            readers += int(cf.property_int_value("rocksdb.estimate-table-readers-mem") or 0)
            memtables += int(cf.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
        return {"block_cache": self.block_cache_usage(), "table_readers": readers,
                "memtables": memtables}


#: Probing the block cache before a read costs ~1 us a key and saves the hand-off of a hit
#: to a read thread (10-20 us on two cores, more under load): it pays from about this share
#: of a family's keys found cached.
_PROBE_MIN_HITS = 0.05
#: Below that share, one multi-get in this many still probes, to notice a cache warming up.
_PROBE_EVERY = 32
#: The hit share is measured over about this many recent probed keys.
_PROBE_WINDOW = 4096


class _CacheOdds:
    """How often one family's keys were found in the block cache by recent probes.

    Shared by the threads that search; the counters are updated without a lock (a lost
    update only skews an estimate)."""

    def __init__(self) -> None:
        self.keys = 0
        self.hits = 0
        self.calls = 0

    def worth_probing(self) -> bool:
        self.calls += 1
        return self.hits >= _PROBE_MIN_HITS * self.keys or self.calls % _PROBE_EVERY == 0

    def record(self, keys: int, hits: int) -> None:
        self.keys += keys
        self.hits += hits
        if self.keys > _PROBE_WINDOW:  # halve: older probes weigh less
            self.keys //= 2
            self.hits //= 2


class _Failed:
    """An exception raised in a read thread, carried back to the caller."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Calls:
    """``fn`` over ``args``, each call claimed by whichever thread gets to it first: a read
    thread, or the caller once it asks for the results (it then runs every call no thread
    has started instead of waiting for one to wake up)."""

    def __init__(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> None:
        self._fn, self._args = fn, args
        self._out: list[Any] = [None] * len(args)
        self._claims = [threading.Lock() for _ in args]
        self._finished = threading.Lock()
        self._finished.acquire()
        self._done = itertools.count(1)

    def run(self, slot: int) -> None:
        if not self._claims[slot].acquire(blocking=False):
            return  # another thread runs it
        try:
            self._out[slot] = self._fn(self._args[slot])
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self._out[slot] = _Failed(e)
        if next(self._done) == len(self._args):  # itertools.count: atomic under the GIL
            # every call is done: let go of the reader (a column family, which keeps the
            # database open) before the caller wakes, since this object may outlive the
            # call in the queue (parts the caller ran itself) or in a thread's frame
            self._fn = None  # type: ignore[assignment]
            self._finished.release()

    def result(self) -> list[Any]:
        for slot in reversed(range(len(self._args))):  # the threads take them from the front
            self.run(slot)
        self._finished.acquire()
        self._finished.release()  # result() may be asked again
        for value in self._out:
            if isinstance(value, _Failed):
                raise value.error
        return self._out


class _ReadThreads:
    """Threads that run the parts of multi-gets beside their callers.

    Leaner than a ThreadPoolExecutor, whose future, condition and wake-up per part cost more
    than a cached read (~100 us for four parts): parts go through one C queue, the last one
    to finish releases the one lock its caller waits on, and the caller runs the parts no
    thread has started yet instead of idling. Callers may share it from several threads: a
    part never waits for another, so parts queued behind other calls' only delay, never
    block.
    """

    def __init__(self, count: int, name: str) -> None:
        self._parts: queue.SimpleQueue[tuple[_Calls, int] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        while (part := self._parts.get()) is not None:
            calls, slot = part
            calls.run(slot)
            # between parts hold nothing: a finished call's function is a column family's
            # reader, which would keep an unclosed collection's database (and lock) alive
            del part, calls

    def start(self, fn: Callable[[Any], Any], args: Sequence[Any], keep: int = 0) -> _Calls:
        """Start ``fn`` over ``args`` on the threads, but for the last ``keep`` calls, which
        the caller runs when it asks for the results (``result()``, in order of ``args``)."""
        calls = _Calls(fn, args)
        for slot in range(len(args) - keep):
            self._parts.put((calls, slot))
        return calls

    def stop(self) -> None:
        """Ask the threads to end once the parts queued before have run (no wait)."""
        for _ in self._threads:
            self._parts.put(None)

    def shutdown(self) -> None:
        """:meth:`stop`, then wait for the threads to end (a later stop does nothing)."""
        self.stop()
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()


def _write_marker(path: Path, version: int) -> None:
    tmp = path / (COLLECTION_MARKER + ".tmp")
    tmp.write_text(json.dumps({"format_version": version}) + "\n")
    os.replace(tmp, path / COLLECTION_MARKER)


#: Target size of a block of the families read one value at a time, vectors and postings
#: (see :func:`_uncached_table` and :func:`_cached_table`).
POINT_BLOCK_BYTES = 512


def _cached_table(cache: rocksdict.Cache | None, block_bytes: int | None = None
                  ) -> rocksdict.BlockBasedOptions:
    """Table options of the families read through the block cache (``cache``; None: none).

    Their index and filter blocks live in the (bounded) cache instead of unbounded heap.
    ``block_bytes``: the postings family's blocks are ``POINT_BLOCK_BYTES``, so every posting
    of that size or more sits alone in its block. A probe reads a whole block, and at
    RocksDB's default 4 KiB a block takes a second posting unless it is 90% full already:
    postings of 32 OPQ codes (about 3.4 kB) came two to a block, and every probe read both
    (Fashion-MNIST: 88 kB a query, 66 kB one to a block, at recall@10 0.95).
    """
    table = rocksdict.BlockBasedOptions()
    if cache is not None:
        table.set_block_cache(cache)
    else:
        table.disable_cache()
    table.set_cache_index_and_filter_blocks(True)
    table.set_bloom_filter(10, False)
    if block_bytes is not None:
        table.set_block_size(block_bytes)
    return table


def _uncached_table() -> rocksdict.BlockBasedOptions:
    """Table options of the vectors family: its blocks never enter the block cache.

    The rerank reads each candidate's vector once, at random among all of them: a cached
    vector block is almost never read again (4 MiB hold 2% of Fashion-MNIST's 180 MB), yet
    each query put ~30 of them in the cache, where they evicted the postings (which repeat
    across queries) and churned the heap. Without a block cache the family's index and
    filter blocks are held by its table readers (``table_readers`` in
    :meth:`Storage.memory_usage`, ~12 bytes per stored vector) instead of competing for the
    cache; they are read on every vector lookup, so they must stay in memory either way.

    Blocks of ``POINT_BLOCK_BYTES``: a lookup reads a whole block, and a block takes another
    entry unless it is past 90% of the target already, so at RocksDB's default 4 KiB each
    rerank read fetched two 3 KiB float32 vectors (Fashion-MNIST: 30,000 blocks of 6.3 KB for
    60,000 vectors), and at 1 KiB two of its 784-byte uint8 vectors. At 512 bytes every
    vector of 512 bytes or more sits alone in its block (smaller ones share blocks of about
    512 bytes, a sector). One block a vector doubles the entries of the block index against
    two, which the table readers hold in RAM: its keys are prefix-compressed in runs of 16 (a
    lookup's binary search ends in a scan of at most 16), which took it from 1.30 to 0.41 MB
    at 60,000 float32 vectors (0.70 MB at two vectors a block and one key a run), with no
    slowdown measured.
    """
    table = rocksdict.BlockBasedOptions()
    table.disable_cache()
    table.set_bloom_filter(10, False)
    table.set_block_size(POINT_BLOCK_BYTES)
    table.set_index_block_restart_interval(16)
    return table


def _family_options(table: rocksdict.BlockBasedOptions) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.set_block_based_table_factory(table)
    return opts
