"""A collection: lifecycle and the write path (validate -> route -> encode -> store).

Writes to one collection are serialised by a lock; each call is one atomic WriteBatch, so a
call's effect is all there or not at all, and a returned call is durable (RocksDB WAL).
Searches run concurrently with each other and with writes: they capture a :class:`ReadView`
once and writers swap in a new one after their batch is written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anns.basis import Basis, fit_basis
from anns.compat import CompatReport, fit_model_transform
from anns.config import IndexConfig, SearchParams, StorageConfig, validated
from anns.errors import (
    AlreadyExistsError,
    CollectionClosedError,
    CorruptCollectionError,
    DTypeError,
    EmptyCollectionError,
    FailedPreconditionError,
    IdExistsError,
    IncompleteBuildError,
    InvalidArgumentError,
    LimitExceededError,
    NotFoundError,
)
from anns.memory import release_freed_heap
from anns.models import BASE, ModelVersion, Models, check_name, describe, fit_calibration
from anns.quantization import Codec, load_codec, make_codec
from anns.retrain import TRAINED_ROWS, due, retrain
from anns.routing import Router, balanced_clusters
from anns.search import ReadView, SearchResult, SearchStats, search
from anns.storage import (
    FORMAT_VERSION,
    MAX_MODEL_VERSIONS,
    TOMBSTONE,
    Batch,
    Storage,
    decode_posting,
    decode_record,
    decode_records,
    decode_vectors,
    encode_posting,
    encode_record,
    encode_records,
    record_version,
)
from anns.tuning import (
    Profile,
    TuneReport,
    default_target,
    profiles_from_json,
    profiles_to_json,
    tune,
)
from anns.vectors import MAX_ID, as_ids, as_vectors, check_k, check_storable, prefix

if TYPE_CHECKING:
    from anns.backfill import BackfillReport
    from anns.rebase import RebaseReport

#: Queries of a batch searched on one state of the collection (under one hold of the read
#: lock): a larger batch goes a slice at a time, so a write waits for a slice, not the batch
#: (a 30,000-query batch held an add back for 0.7 s). Slices this large still share most
#: postings between their queries.
SEARCH_SLICE = 4096

log = logging.getLogger(__name__)

STATE_BUILDING, STATE_READY = b"building", b"ready"


def _stored_basis_matrix(storage: Storage) -> np.ndarray:
    """The matrix of a collection's stored basis (the loader of a lazy one, see
    :meth:`Basis.lazy`)."""
    matrix = Basis.from_bytes(storage.get_meta("basis") or b"").matrix
    if matrix is None:
        raise CorruptCollectionError(f"the stored basis of {storage.path} has no matrix")
    return matrix


class Collection:
    """A vector collection stored in one directory.

    Open with :meth:`open` or :meth:`create` (or build one with :func:`anns.build`); use as a
    context manager or call :meth:`close`. Methods take and return numpy arrays; vectors are
    float32 [n, dim], ids int64 [n] (non-negative).
    """

    def __init__(self, storage: Storage, config: IndexConfig) -> None:
        self._storage = storage
        self.config = config
        self._lock = threading.Lock()  # serialises writers
        self._commit = _ReadWriteLock()  # searches vs. the moment a write lands
        self._view: ReadView | None = None
        self._closed = False
        profiles_blob = storage.get_meta("profiles")
        self._profiles = profiles_from_json(profiles_blob)
        self._default_profile = default_target(profiles_blob)
        self._models = self._load_models()
        router_blob, codec_blob = storage.get_meta("router"), storage.get_meta("codec")
        if router_blob is not None and codec_blob is not None:
            basis_blob = storage.get_meta("basis")
            # format 1 stored raw vectors: its basis is the identity
            basis = Basis.from_bytes(basis_blob) if basis_blob else Basis.identity(config.dim)
            if basis.dim != config.dim:
                raise CorruptCollectionError(
                    f"the stored basis maps {basis.dim} dims but the collection holds "
                    f"{config.dim}-dim vectors"
                )
            if config.vector_dtype != "float32":
                # searches map queries onto the scanned prefix only (the rerank reads vectors
                # as given): the whole matrix is loaded if a write, recode or tune needs it.
                # The loader holds the storage, not this collection (no reference cycle)
                basis = basis.lazy(functools.partial(_stored_basis_matrix, storage),
                                   keep=config.scan_dims)
            router = Router.from_bytes(router_blob, config.centroid_index, config.hnsw_threshold)
            codec = load_codec(config.codec, config.scan_dims, config.metric, codec_blob,
                               full_dim=config.dim)
            self._view = self._make_view(basis, router, codec)
            del router_blob, codec_blob, basis_blob
            release_freed_heap()  # the read buffers of the blobs

    # ------------------------------------------------------------------------- lifecycle
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        config: IndexConfig,
        storage: StorageConfig | None = None,
    ) -> Collection:
        """Create an empty collection at ``path`` (a new or empty directory).

        The first :meth:`add` trains routing and the codec on its batch; for large data prefer
        :func:`anns.build`, which trains on a sample of everything.
        """
        store = Storage.create(path, storage or StorageConfig())
        batch = store.batch()
        batch.put_meta("config", config.model_dump_json().encode())
        batch.put_meta("state", STATE_READY)
        batch.put_meta("count", b"0")
        store.write(batch)
        return cls(store, config)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], storage: StorageConfig | None = None
    ) -> Collection:
        """Open an existing collection. Raises CollectionNotFoundError, FormatVersionError,
        IncompleteBuildError or CorruptCollectionError with the reason."""
        store = Storage.open(path, storage or StorageConfig())
        try:
            state = store.get_meta("state")
            if state == STATE_BUILDING:
                raise IncompleteBuildError(
                    f"collection at {store.path} is from a bulk build that did not finish; "
                    f"delete the directory and run the build again"
                )
            raw = store.get_meta("config")
            if raw is None or state != STATE_READY:
                raise CorruptCollectionError(
                    f"collection at {store.path} has no configuration or state record"
                )
            return cls(store, IndexConfig.model_validate_json(raw))
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Flush and close the database. Further calls raise CollectionClosedError; searches
        in flight finish first (the database is never closed under a read)."""
        with self._lock:
            if not self._closed:
                with self._commit.write():
                    self._closed = True
                    self._storage.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- figures
    @property
    def path(self) -> Path:
        return self._storage.path

    @property
    def dim(self) -> int:
        return self.config.dim

    def count(self) -> int:
        """Number of live (stored, not deleted) vectors."""
        with self._reading():
            return self._count()

    def _count(self) -> int:
        return int(self._storage.get_meta("count") or b"0")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Reads of stored state that a close cannot land under: it waits for them, and those
        that queued behind it raise CollectionClosedError (as searches do). Not nested: a
        writer waiting between two reads would wait for the first, the second for it."""
        with self._commit.read():
            self._check_open()
            yield

    def __len__(self) -> int:
        return self.count()

    def info(self) -> dict[str, Any]:
        """Configuration and figures as a JSON-ready dict. ``memory``: bytes this open
        collection holds in RAM by part: ``router`` (centroids and their index), ``codec``,
        ``basis``, and RocksDB's ``block_cache``, ``table_readers`` and ``memtables`` (see
        :meth:`anns.storage.Storage.memory_usage`); the process's own costs (code, thread
        stacks, allocator slack) come on top."""
        with self._reading():
            return self._info()

    def _info(self) -> dict[str, Any]:
        view = self._view
        summary = self._storage.get_meta("build_summary")
        return {
            "path": str(self.path),
            "format_version": self._storage.format_version,
            "config": self.config.model_dump(),
            "count": self._count(),
            "basis": view.basis.kind if view else None,
            "stage_dims": {
                "d_route": view.d_route, "d_scan": view.d_scan, "d_rerank": view.d_rerank,
            } if view else None,
            "prefix_energy": {
                "d_route": round(view.basis.prefix_energy(view.d_route), 4),
                "d_scan": round(view.basis.prefix_energy(view.d_scan), 4),
            } if view else None,
            "postings": view.router.size if view else 0,
            "centroid_index": view.router.resolved_kind() if view else None,
            "code_size": view.codec.code_size if view else None,
            "centroid_bytes": int(view.router.centroids.nbytes) if view else 0,
            "memory": self._memory(view),
            "disk_bytes": self._storage.disk_bytes(),
            "build": json.loads(summary) if summary else None,
            "models": describe(self._models, self._model_counts(), self.dim),
        }

    def _memory(self, view: ReadView | None) -> dict[str, int]:
        """Bytes this open collection holds in RAM, by part (see :meth:`info`)."""
        parts = {"router": view.router.nbytes, "codec": view.codec.nbytes,
                 "basis": view.basis.nbytes} if view else {"router": 0, "codec": 0, "basis": 0}
        return {**parts, **self._storage.memory_usage()}

    # ----------------------------------------------------------------------------- reads
    def search(
        self,
        queries: Any,
        k: int = 10,
        params: SearchParams | dict[str, Any] | None = None,
        *,
        return_stats: bool = False,
        model: str | None = None,
        **knobs: Any,
    ) -> SearchResult:
        """The ``k`` nearest stored vectors of each query.

        ``queries``: float [q, dim] (or one [dim] vector). ``params`` or keyword knobs
        (``max_postings``, ``eps2``, ``refine_factor``, ``fetch_budget_mb``, ``d_route``,
        ``d_rerank``) tune the search. See
        :class:`SearchResult` for the shapes, ordering and -1 padding of the result.
        ``model``: the model version that embedded the queries (default: the current one);
        they are scored against stored vectors of every version (see :mod:`anns.models`).

        Each query is answered from one state of the collection. A batch of more than
        :data:`SEARCH_SLICE` queries is searched a slice at a time, each slice on the state
        of its start, so a write waits for one slice, not for the whole batch.
        """
        self._check_open()
        k = check_k(k)
        params = self._resolve_params(params, knobs)
        asked = self._models.get(model)
        q = as_vectors(queries, asked.dim, metric=self.config.metric, what="query",
                       of=asked.owner)
        parts: list[tuple[np.ndarray, np.ndarray, SearchStats]] = []
        for start in range(0, max(len(q), 1), SEARCH_SLICE):
            with self._commit.read():  # one state: the router and postings of the same write
                self._check_open()  # a close may have landed while this search waited
                view = self._view
                if view is None:
                    raise EmptyCollectionError(
                        f"collection at {self.path} is empty: nothing to search"
                    )
                # the version as of this view (a rebase moves its map with the routing); a
                # model change that landed since the queries were checked is checked again
                version = (view.models or self._models).get(model)
                if version.dim != q.shape[1]:
                    q = as_vectors(queries, version.dim, metric=self.config.metric,
                                   what="query", of=version.owner)
                parts.append(search(view, q[start : start + SEARCH_SLICE], k, params, version))
        if len(parts) == 1:
            ids, distances, stats = parts[0]
        else:
            ids = np.concatenate([p[0] for p in parts])
            distances = np.concatenate([p[1] for p in parts])
            stats = SearchStats.joined([p[2] for p in parts])
        return SearchResult(ids, distances, stats if return_stats else None)

    def _search_space(self, queries: np.ndarray, k: int, params: SearchParams) -> SearchResult:
        """:meth:`search` for queries in collection space (float32 [q, dim]) made ready by
        :meth:`_space_queries`, scored as the base model's: what tuning measures, whichever
        model versions are stored."""
        with self._commit.read():
            self._check_open()
            view = self._require_view()
            space = view if view.raw_vectors else dataclasses.replace(
                view, basis=Basis.identity(view.dim))
            ids, distances, _ = search(space, queries, k, params)
        return SearchResult(ids, distances)

    def _space_queries(self, queries: np.ndarray) -> np.ndarray:
        """Collection-space queries as :meth:`_search_space` takes them: unchanged, or mapped
        back to the model's space where vectors are stored as given (their rerank scores the
        queries as given; searched through the basis, they come back to collection space)."""
        view = self._require_view()
        return view.basis.invert(queries) if view.raw_vectors else queries

    def _resolve_params(
        self, params: SearchParams | dict[str, Any] | None, knobs: dict[str, Any]
    ) -> SearchParams:
        """The knobs of one search. A SearchParams given is used as is; without one, the
        collection's default profile (if tuned) is the base. Keyword knobs override either.
        ``target_recall`` (in either) swaps the base for that target's profile. A dict is
        read as SearchParams' fields."""
        if isinstance(params, dict):
            params = validated(SearchParams, **params)
        elif params is not None and not isinstance(params, SearchParams):
            raise DTypeError(f"params must be SearchParams (or a dict of its fields), got "
                             f"{type(params).__name__}")
        if params is not None:
            explicit = params.model_dump(exclude_unset=True)
            base = params.model_dump(exclude={"target_recall"})
        else:
            explicit = {}
            default = self._profiles.get(self._default_profile or -1.0)
            base = dict(default.params) if default else {}
        explicit.update(knobs)
        target = explicit.pop("target_recall", None)
        if target is not None:
            target = validated(SearchParams, target_recall=target).target_recall
            base = dict(self._profile_for(float(target)).params)
        if params is not None and not knobs and target is None:
            return params
        return validated(SearchParams, **{**base, **explicit})

    def _profile_for(self, target: float) -> Profile:
        eligible = [t for t in self._profiles if t >= target]
        if not eligible:
            tuned = ", ".join(str(t) for t in sorted(self._profiles)) or "none"
            raise FailedPreconditionError(
                f"no search profile reaches recall {target} (tuned targets: {tuned}); run "
                f"`anns tune {self.path} --recall {target}`"
            )
        return self._profiles[min(eligible)]

    def profiles(self) -> dict[float, dict[str, Any]]:
        """Tuned search profiles by recall target (see :meth:`tune`)."""
        return {t: dataclasses.asdict(p) for t, p in sorted(self._profiles.items())}

    def tune(self, recall: float, **options: Any) -> TuneReport:
        """Measure and store the fastest search knobs reaching ``recall``@k on held-out
        queries sampled from this collection, or on ``query_vectors`` (e.g. a sample of real
        traffic, embedded by ``model``: by default the current one); they become its default
        profile. See :func:`anns.tuning.tune` for the options (queries, k, objective, seed,
        store, d_scans, query_vectors, model)."""
        self._check_open()
        if options.get("store", True):
            self._check_writable()
        return tune(self, recall, **options)

    def retrain(self) -> int:
        """Fit the basis, clustering and codec again on every stored vector and rewrite the
        postings (see :mod:`anns.retrain`); returns how many vectors they were trained on.
        A collection filled by :meth:`add` does this by itself as it grows, until it was
        trained on ``anns.retrain.TRAINED_ENOUGH`` vectors; after many more writes of a
        different spread, a call places postings and codes for what is stored now. Searches
        answer throughout; writes wait. Tuned profiles are dropped. FailedPreconditionError
        while the collection holds several model versions (see :meth:`rebase`)."""
        self._check_writable()
        with self._lock:
            self._check_open()
            if self._models.mixed:
                raise FailedPreconditionError(
                    "a collection holding several model versions is rebuilt by rebase, once "
                    "one is left")
            return retrain(self)

    def recode(
        self,
        *,
        d_scan: int | None = None,
        codec: str | None = None,
        pq_m: int | None = None,
        sample: int = 16384,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Re-encode every posting for new scan dims and/or a new codec, from the stored full
        vectors: change the bytes per vector or the scanned prefix of a live collection
        without rebuilding it. Routing, the basis and the full vectors stay as they are.

        The codec trains on ``sample`` stored vectors; one pass over the vectors then encodes
        them and every posting is rewritten in one atomic batch (memory: the new codes of
        every posting entry). Searches keep answering throughout on the old codes and see
        the new ones at once; writes wait. Tuned profiles measured on the old codes are
        dropped. Returns the new stage dims and code size.
        """
        self._check_writable()
        with self._lock:
            self._check_open()
            view = self._require_view()
            fields = self.config.model_dump()
            fields["d_route"] = view.d_route  # the centroids stay at their dims
            if d_scan is not None:
                fields["d_scan"] = d_scan
            if codec is not None:
                fields["codec"] = codec
            if pq_m is not None:
                fields["pq_m"] = pq_m
            config = validated(IndexConfig, **fields)
            new_codec = make_codec(config.codec, config.scan_dims, config.metric, config.pq_m,
                                   full_dim=config.dim, tail_norms=config.tail_norms)
            all_ids = self._storage.vector_ids()
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(all_ids, min(sample, len(all_ids)), replace=False))
            new_codec.train(self._stored(chosen))

            # one pass over the vectors: the new code of every stored id, by position
            codes = np.empty((len(all_ids), new_codec.code_size), dtype=np.uint8)
            at = 0
            for _, vectors, versions in self._storage.iter_vectors(self.dim, view.vector_dtype):
                codes[at : at + len(vectors)] = new_codec.encode(view.stored(vectors, versions))
                at += len(vectors)
            batch = self._storage.batch()
            old_size = view.codec.code_size
            for key, blob in self._storage.iter_postings():
                p_ids, _ = decode_posting(bytes(blob), old_size)
                rows = np.minimum(np.searchsorted(all_ids, p_ids), len(all_ids) - 1)
                if len(p_ids) and not np.array_equal(all_ids[rows], p_ids):
                    raise CorruptCollectionError(
                        f"posting {int.from_bytes(bytes(key), 'big')} of collection "
                        f"{self.path} holds ids with no stored vector"
                    )
                pid = int.from_bytes(bytes(key), "big")
                batch.put_posting(pid, encode_posting(p_ids, codes[rows]))
            del codes
            batch.put_meta("codec", new_codec.to_bytes())
            batch.put_meta("config", config.model_dump_json().encode())
            batch.delete_meta("profiles")
            upgrade = self._upgrade_format(batch)
            new_view = self._make_view(view.basis, view.router, new_codec)
            with self._commit.write():
                self._storage.write(batch)
                self.config, self._view = config, new_view
                self._profiles, self._default_profile = {}, None
            if upgrade:
                self._storage.upgraded()
            release_freed_heap()
            log.info("recoded postings: %s codes of %d dims, %d bytes per vector",
                     config.codec, config.scan_dims, new_codec.code_size)
            return {"stage_dims": {"d_route": new_view.d_route, "d_scan": new_view.d_scan,
                                   "d_rerank": new_view.d_rerank},
                    "codec": config.codec, "code_size": new_codec.code_size}

    def _store_profiles(self, profiles: dict[float, Profile], default: float | None) -> None:
        """Replace the stored profiles (and the default target) with ``profiles``."""
        with self._lock:
            self._check_open()
            batch = self._storage.batch()
            if profiles:
                batch.put_meta("profiles", profiles_to_json(profiles, default))
            else:
                batch.delete_meta("profiles")
            self._storage.write(batch)
            self._profiles, self._default_profile = dict(profiles), default

    def _stored(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of validated ids, in the collection basis; NotFoundError names
        missing ids."""
        rows, versions = self._decoded(ids)
        # the base-space image of every version: the first dim floats
        return np.ascontiguousarray(self._require_view().stored(rows, versions)[:, : self.dim])

    def _decoded(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~anns.storage.decode_vectors` of validated ids' stored vectors, cut to the
        base dims; NotFoundError names missing ids."""
        blobs = self._storage.get_vectors(ids)
        missing = [int(i) for i, b in zip(ids, blobs) if b is None]
        if missing:
            raise NotFoundError(f"{len(missing)} id(s) not stored, e.g. {missing[:5]}")
        if not len(ids):
            return np.empty((0, self.dim), dtype=np.float32), np.zeros(0, np.int64)
        rows, versions = decode_vectors(blobs, self.dim, self._require_view().vector_dtype)  # type: ignore[arg-type]
        return np.ascontiguousarray(rows[:, : self.dim]), versions

    def get(self, ids: Any) -> np.ndarray:
        """Full stored vectors of ``ids`` as float32 [n, dim]; NotFoundError names missing ids.

        Vectors are stored in the collection basis; a PCA basis maps them back with float32
        rounding (about 1e-7 relative), so they equal what was added up to that (cosine
        collections return the normalised vectors). An integer ``vector_dtype`` stores them
        as given: they come back exactly. A vector stored under another model version comes
        back as its image in the base model's space (see :mod:`anns.models`)."""
        wanted = as_ids(ids)
        with self._reading():
            rows, versions = self._decoded(wanted)
            view = self._view
        if not len(rows) or view is None:
            return rows
        mapped = versions != 0 if view.raw_vectors else np.ones(len(rows), dtype=bool)
        # back from the collection basis: the vector as given, up to float32 rounding of
        # the rotation (exact for an identity basis)
        if mapped.all():
            return view.basis.invert(rows)
        if mapped.any():
            rows[mapped] = view.basis.invert(np.ascontiguousarray(rows[mapped]))
        return rows

    def contains(self, ids: Any) -> np.ndarray:
        """bool [n]: which ids are stored (and not deleted)."""
        wanted = as_ids(ids)
        with self._reading():
            blobs = self._storage.get_vectors(wanted)
        return np.fromiter((b is not None for b in blobs), dtype=bool, count=len(blobs))

    # ---------------------------------------------------------------------------- writes
    def add(self, vectors: Any, ids: Any = None, *, model: str | None = None) -> np.ndarray:
        """Store new vectors; searchable as soon as the call returns.

        ``ids`` default to consecutive integers after the largest id ever assigned. An id that
        is already stored is an IdExistsError and nothing is written (use :meth:`upsert` to
        replace). A deleted id may be added again. ``model``: the model version that embedded
        the vectors (default: the current one). Returns the ids (int64 [n]).
        """
        return self._write(vectors, ids, replace=False, model=model)

    def upsert(self, vectors: Any, ids: Any, *, model: str | None = None) -> np.ndarray:
        """Store vectors, replacing any stored under the same ids (atomically), whatever
        version they were stored under; ``model`` as in :meth:`add`. Returns ids."""
        return self._write(vectors, ids, replace=True, model=model)

    def delete(self, ids: Any) -> int:
        """Delete ids; a deleted id is never returned by search. Unknown ids are ignored.

        Returns how many stored vectors were deleted.
        """
        self._check_writable()
        ids = as_ids(ids)
        with self._lock:
            self._check_open()
            live, old_pids, old_versions = self._live_records(ids)
            gone = ids[live]
            if not len(gone):
                return 0
            view = self._require_view()
            batch = self._storage.batch()
            postings = self._read_postings(np.unique(old_pids), view)
            removed = 0
            gone_sorted = np.sort(gone)
            for pid, (pids_ids, codes) in postings.items():
                keep = ~_members(pids_ids, gone_sorted)
                removed += int((~keep).sum())
                batch.put_posting(pid, encode_posting(pids_ids[keep], codes[keep]))
            batch.put_meta("entries", str(self._entries() - removed).encode())
            tomb = encode_record(np.empty(0, np.int64), TOMBSTONE)
            batch.put_records(gone, [tomb] * len(gone))
            batch.delete_vectors(gone)
            batch.put_meta("count", str(self._count() - len(gone)).encode())
            self._put_counts(batch, old_versions[live], None, 0)
            with self._commit.write():
                self._storage.write(batch)
            return len(gone)

    # --------------------------------------------------------------------- model versions
    def models(self) -> dict[str, Any]:
        """The model versions: current, retired, and per version its dim, width, count."""
        self._check_open()
        return describe(self._models, self._model_counts(), self.dim)

    def add_model(
        self,
        name: str,
        old_pairs: Any,
        new_pairs: Any,
        *,
        force: bool = False,
        dry_run: bool = False,
        current: bool = True,
        seed: int = 0,
        against: str | None = None,
    ) -> CompatReport:
        """Register a new embedding model version from paired embeddings.

        ``old_pairs`` float [n, dim of ``against``] (a registered version, default the
        current one) and ``new_pairs`` float [n, new_dim] (the new model) embed the same n
        items, row by row. Fits the new model's transform
        into collection space and its score calibration (:mod:`anns.compat`,
        :mod:`anns.models`) and runs the quality gate: IncompatibleModelError with the
        reasons and the figures when it refuses, unless ``force``. ``dry_run`` fits and
        reports but stores nothing. With ``current`` the version becomes the one writes and
        queries use when they name none. Nothing stored changes: old vectors stay as they
        are, searchable by queries of either model. Returns the report (its ``verdict``).
        """
        self._check_writable()
        check_name(name)
        with self._lock:
            self._check_open()
            view = self._require_view()
            if any(v.name == name for v in self._models.versions) or name in self._models.retired:
                raise AlreadyExistsError(f"model {name!r} is already registered (or retired) "
                                         f"in collection {self.path}")
            if self._models.next_index > MAX_MODEL_VERSIONS:
                raise LimitExceededError(f"a collection holds at most {MAX_MODEL_VERSIONS} "
                                         f"model versions over its life")
            ref = self._models.get(against)
            old = as_vectors(old_pairs, ref.dim, metric=self.config.metric, what="old pairs",
                             of=ref.owner)
            new = np.asarray(new_pairs)
            if new.ndim != 2 or len(new) != len(old):
                raise InvalidArgumentError(
                    f"paired embeddings must have the same rows: {len(old)} old, "
                    f"{len(new) if new.ndim else 0} new (shape {new.shape})")
            new = as_vectors(new, new.shape[1], metric=self.config.metric, what="new pairs")
            old = ref.base_image(old, view.basis)  # fitted straight into collection space
            transform, report = fit_model_transform(
                old, new, self.config.metric, seed=seed, force=force, check=not dry_run)
            if dry_run:
                return report
            version = ModelVersion(name, self._models.next_index, new.shape[1], transform,
                                   fit_calibration(transform, old, new, self.config.metric))
            models = self._models.with_version(version, current=current)
            batch = self._storage.batch()
            batch.put_meta(f"model/{name}", transform.to_bytes())
            batch.put_meta("models", models.to_json())
            batch.put_meta(f"model_report/{name}", json.dumps(report.to_dict()).encode())
            upgrade = self._upgrade_format(batch)
            self._set_models(batch, models)
            if upgrade:
                self._storage.upgraded()
            log.info("registered model %r (%s): %s", name, report.verdict, report.summary())
            return report

    def set_current(self, name: str) -> None:
        """Make ``name`` the version writes and queries use when they name none (rollback:
        set the base model current again)."""
        self._check_writable()
        with self._lock:
            self._check_open()
            models = self._models.with_current(name)
            batch = self._storage.batch()
            batch.put_meta("models", models.to_json())
            self._set_models(batch, models)

    def retire(self, name: str) -> None:
        """Remove a model version no stored vector uses any more; its queries and writes are
        then refused. Refuses (FailedPreconditionError) while vectors of it remain or while
        it is current. Retiring the base model retires its queries and writes; its space stays
        the collection space (routing and codes read its dims) until :meth:`rebase`."""
        self._check_writable()
        with self._lock:
            self._check_open()
            version = self._models.get(name)
            if self._models.current == version.name:
                raise FailedPreconditionError(
                    f"model {name!r} is current; make another version current first")
            left = self._model_counts().get(version.name, 0)
            if left:
                raise FailedPreconditionError(
                    f"model {name!r} still has {left} stored vector(s); backfill them under "
                    f"another version (or delete them) before retiring it")
            models = self._models.without(version.name)
            batch = self._storage.batch()
            batch.put_meta("models", models.to_json())
            if not version.is_base:
                batch.delete_meta(f"model/{version.name}")
            self._set_models(batch, models)

    def backfill(
        self,
        model: str,
        vectors: Any,
        ids: Any,
        *,
        batch_rows: int | None = None,
        progress: bool | None = None,
        on_batch: Any = None,
    ) -> BackfillReport:
        """Re-store items under model version ``model``: ``vectors`` float [n, model dim]
        (numpy or memory-mapped) embedded by it, ``ids`` int64 [n] unique (ids not stored are
        added). Upserts in atomic batches of ``batch_rows``, each with a checkpoint, so a
        killed run resumes where it stopped when run again with the same input (see
        :mod:`anns.backfill`). ``progress``: a tqdm bar on stderr (None: only on a terminal).
        ``on_batch(rows_done)`` is called after each stored batch. Returns a BackfillReport.
        """
        from anns.backfill import DEFAULT_BATCH_ROWS, backfill

        self._check_writable()
        return backfill(self, model, vectors, ids, batch_rows=batch_rows or DEFAULT_BATCH_ROWS,
                        progress=progress, on_batch=on_batch)

    def rebase(self, *, seed: int | None = None) -> RebaseReport:
        """Rebuild the collection space, routing and codes in the space of its only model
        version, once every vector was backfilled under it and the base model retired: the
        new model's extra dims then count in routing and the scan too, not only in the
        rerank. FailedPreconditionError while another version is registered. Searches
        answer throughout (on the old state until the new one lands, atomically); writes
        wait. Drops tuned profiles. Returns a RebaseReport (see :mod:`anns.rebase`).
        """
        from anns.rebase import rebase

        self._check_writable()
        with self._lock:
            self._check_open()
            return rebase(self, seed=seed)

    def _swap_space(self, batch: Batch, config: IndexConfig, basis: Basis, router: Router,
                    codec: Codec, models: Models, *, entries: int) -> None:
        """Write ``batch`` (a rebuilt space: every vector, posting and record) and swap in
        the config, models and a view of the new space at once (writer lock held)."""
        view = self._make_view(basis, router, codec, entries=entries, models=models,
                               config=config)
        upgrade = self._upgrade_format(batch)
        with self._commit.write():
            self._storage.write(batch)
            self.config, self._view, self._models = config, view, models
            self._profiles, self._default_profile = {}, None
        if upgrade:
            self._storage.upgraded()
        release_freed_heap()

    def _upgrade_format(self, batch: Batch) -> bool:
        """Record in ``batch`` that an older collection is now FORMAT_VERSION (for a write
        that may use what is new); whether it did: the caller then calls
        ``Storage.upgraded`` once the batch is written."""
        upgrade = self._storage.format_version < FORMAT_VERSION
        if upgrade:
            self._storage.upgrade_format(batch)
        return upgrade

    def _set_meta(self, name: str, value: bytes) -> None:
        with self._lock:
            batch = self._storage.batch()
            batch.put_meta(name, value)
            self._storage.write(batch)

    def _set_models(self, batch: Batch, models: Models) -> None:
        """Write ``batch`` and swap in ``models`` (and a view that carries them)."""
        view = self._view
        new_view = (self._make_view(view.basis, view.router, view.codec, models=models)
                    if view else None)
        with self._commit.write():
            self._storage.write(batch)
            self._models, self._view = models, new_view

    def _load_models(self) -> Models:
        blob = self._storage.get_meta("models")
        if blob is None:
            return Models.base_only(self.config.dim)
        names = [v["name"] for v in json.loads(blob)["versions"]]
        return Models.from_meta(
            blob, {n: self._storage.get_meta(f"model/{n}") for n in names}, self.config.dim)

    def _model_counts(self) -> dict[str, int]:
        blob = self._storage.get_meta("model_counts")
        if blob is None:  # formats 1-2, or nothing registered yet: all the base model's
            return {BASE: self._count()}
        counts: dict[str, int] = json.loads(blob)
        return counts

    def _put_counts(self, batch: Batch, removed: np.ndarray, added: ModelVersion | None,
                    n_added: int) -> None:
        """Per-version counts after removing vectors of version indices ``removed`` and
        adding ``n_added`` of ``added`` (the caller holds the write lock)."""
        counts = self._model_counts()
        names = {v.index: v.name for v in self._models.versions}
        indices, per = np.unique(removed, return_counts=True)
        for i, c in zip(indices.tolist(), per.tolist()):
            key = names.get(i, f"#{i}")
            counts[key] = counts.get(key, 0) - c
        if added is not None:
            counts[added.name] = counts.get(added.name, 0) + n_added
        batch.put_meta("model_counts", json.dumps(counts).encode())

    # ------------------------------------------------------------------------- internals
    def _write(self, vectors: Any, ids: Any, *, replace: bool, model: str | None = None,
               meta: dict[str, bytes] | None = None) -> np.ndarray:
        """The write path; ``meta`` entries go into the same atomic batch (checkpoints)."""
        self._check_writable()
        with self._lock:
            self._check_open()
            # the version as of this write: a rebase or retire that held the lock meanwhile
            # has moved it (its vectors would be stored in a space the collection left)
            version = self._models.get(model)
            x = as_vectors(vectors, version.dim, metric=self.config.metric, of=version.owner)
            # what the vectors family holds: the base model's vectors as given for an integer
            # vector_dtype (checked before anything is written), else their stored form
            dtype = self.config.vector_dtype if version.is_base else "float32"
            as_given = check_storable(x, dtype)
            if ids is None:
                if replace:
                    raise InvalidArgumentError("upsert needs explicit ids: the ids to replace")
                start = int(self._storage.get_meta("next_id") or b"0")
                if start + len(x) - 1 > MAX_ID:
                    raise LimitExceededError(
                        f"ids are assigned after the largest ever stored, {start - 1}: "
                        f"{len(x)} more would pass the largest id, {MAX_ID}; give ids")
                ids = np.arange(start, start + len(x), dtype=np.int64)
            ids = as_ids(ids, len(x))
            if not len(x):
                return ids
            live, old_pids, old_versions = self._live_records(ids)
            if live.any() and not replace:
                shown = ", ".join(str(int(i)) for i in ids[live][:5])
                raise IdExistsError(
                    f"{int(live.sum())} id(s) already stored ({shown}); use upsert to replace"
                )
            batch = self._storage.batch()
            view = self._view or self._bootstrap(x, batch)
            router, codec = view.router, view.codec
            cfg = self.config
            x = version.stored_form(x, view.basis)

            rep, _ = router.replicas(prefix(x, view.d_route), cfg.replica_cap, cfg.eps1)
            rows, slots = np.nonzero(rep >= 0)
            target = rep[rows, slots]
            touched = np.unique(np.concatenate([target, old_pids]))
            codes = codec.encode(x)
            replaced = ids[live]
            postings, entries_delta = self._merge_postings(
                touched, view, replaced, target, ids[rows], codes[rows])
            router, moves = self._split_oversized(postings, router, codec, view.d_route)
            rep = self._apply_moves_to_batch_rows(rep, ids, moves)
            self._rewrite_moved_records(moves, set(ids.tolist()), batch)

            for pid, (p_ids, p_codes) in postings.items():
                batch.put_posting(pid, encode_posting(p_ids, p_codes))
            batch.put_vectors(ids, x if as_given.dtype == np.float32 else as_given, version.index)
            batch.put_records(ids, encode_records(rep, version=version.index))
            batch.put_meta("count", str(self._count() + len(ids) - len(replaced)).encode())
            self._put_counts(batch, old_versions[live], version, len(ids))
            for name, value in (meta or {}).items():
                batch.put_meta(name, value)
            batch.put_meta("entries", str(self._entries() + entries_delta).encode())
            next_id = max(int(self._storage.get_meta("next_id") or b"0"), int(ids.max()) + 1)
            batch.put_meta("next_id", str(next_id).encode())
            if router is not view.router:
                batch.put_meta("router", router.to_bytes())
            view = self._make_view(
                view.basis, router, codec, entries=self._entries() + entries_delta
            )
            with self._commit.write():
                self._storage.write(batch)
                self._view = view
            trained = self._storage.get_meta(TRAINED_ROWS)
            if due(None if trained is None else int(trained), self._count(), self._models.mixed):
                retrain(self)  # grown to twice what its first batch trained it on
            return ids

    def _bootstrap(self, x: np.ndarray, batch: Batch) -> ReadView:
        """Fit the basis and train routing and the codec on the first batch written to an
        empty collection (raw vectors)."""
        cfg = self.config
        basis = fit_basis(x, cfg)
        x = basis.apply(x)
        centroids, _ = balanced_clusters(
            prefix(x, cfg.route_dims), cfg.posting_size, iters=cfg.kmeans_iters, seed=cfg.seed
        )
        codec = make_codec(cfg.codec, cfg.scan_dims, cfg.metric, cfg.pq_m,
                           full_dim=cfg.dim, tail_norms=cfg.tail_norms)
        codec.train(x)
        router = Router(centroids, cfg.centroid_index, cfg.hnsw_threshold)
        batch.put_meta("basis", basis.to_bytes())
        batch.put_meta("router", router.to_bytes())
        batch.put_meta("codec", codec.to_bytes())
        batch.put_meta(TRAINED_ROWS, str(len(x)).encode())
        log.info("trained routing (%d postings) and codec on the first batch", router.size)
        return self._make_view(basis, router, codec)

    def _split_oversized(
        self, postings: dict[int, tuple[np.ndarray, np.ndarray]], router: Router, codec: Codec,
        d_route: int,
    ) -> tuple[Router, list[tuple[int, int, np.ndarray]]]:
        """Split postings over max_posting_size (in place); returns the new router and moves
        (old posting, new posting, ids moved)."""
        cfg = self.config
        replaced: dict[int, np.ndarray] = {}
        added: list[np.ndarray] = []
        moves: list[tuple[int, int, np.ndarray]] = []
        next_pid = router.size
        for pid in [p for p, (i, _) in postings.items() if len(i) > cfg.max_posting_size]:
            p_ids, p_codes = postings[pid]
            leaf = max(1, cfg.max_posting_size * 2 // 3)
            # the codes' dims start with the routing prefix (d_route <= d_scan)
            centroids, labels = balanced_clusters(
                prefix(codec.decode(p_codes), d_route), leaf, iters=cfg.kmeans_iters,
                seed=cfg.seed + pid,
            )
            replaced[pid] = centroids[0]
            postings[pid] = (p_ids[labels == 0], p_codes[labels == 0])
            for j in range(1, len(centroids)):
                postings[next_pid] = (p_ids[labels == j], p_codes[labels == j])
                moves.append((pid, next_pid, p_ids[labels == j]))
                added.append(centroids[j])
                next_pid += 1
        if not replaced:
            return router, moves
        log.info("split %d oversized posting(s) into %d", len(replaced), len(replaced) + len(added))
        new = router.with_centroids(replaced, np.array(added, dtype=np.float32).reshape(-1, router.dim))
        return new, moves

    @staticmethod
    def _apply_moves_to_batch_rows(
        rep: np.ndarray, ids: np.ndarray, moves: list[tuple[int, int, np.ndarray]]
    ) -> np.ndarray:
        for old, new, moved in moves:
            rows = np.isin(ids, moved)
            rep[rows] = np.where(rep[rows] == old, new, rep[rows])
        return rep

    def _rewrite_moved_records(
        self, moves: list[tuple[int, int, np.ndarray]], in_batch: set[int], batch: Batch
    ) -> None:
        """Records of stored vectors (not in this batch) that splits moved to new postings.

        A vector held by several split postings is read once and written once with every
        move applied (two independent rewrites would each undo the other's move).
        """
        moved_to: dict[int, list[tuple[int, int]]] = {}
        for old, new, moved in moves:
            for vid in moved.tolist():
                if vid not in in_batch:
                    moved_to.setdefault(vid, []).append((old, new))
        if not moved_to:
            return
        vids = np.fromiter(moved_to, dtype=np.int64, count=len(moved_to))
        for vid, blob in zip(vids.tolist(), self._storage.get_records(vids)):
            if blob is None:
                continue
            flags, pids = decode_record(blob)
            for old, new in moved_to[vid]:
                pids = np.where(pids == old, new, pids)
            batch.put_record(vid, encode_record(pids, flags, record_version(blob)))

    def _live_records(
        self, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which ids are stored (bool [n]), the posting ids holding the stored ones (int64,
        all of them concatenated), and the model version index of every id (int64 [n],
        meaningful where stored)."""
        flags, versions, pids, counts = decode_records(self._storage.get_records(ids))
        live = (flags >= 0) & (flags != TOMBSTONE)
        return live, pids[np.repeat(live, counts)], versions

    def _merge_postings(
        self, touched: np.ndarray, view: ReadView, replaced: np.ndarray, target: np.ndarray,
        new_ids: np.ndarray, new_codes: np.ndarray,
    ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], int]:
        """The postings ``touched`` (sorted posting ids) as stored, less the entries of the
        ``replaced`` ids, plus entry i of (``new_ids``, ``new_codes``) appended to posting
        ``target[i]`` (in the order given); and the change in the number of entries.

        All postings go through one concatenation, one membership test and one stable sort
        by posting (kept entries first, in their order): a batch touches about every posting
        of the collection, and numpy calls per posting cost more than the data they move."""
        held = self._read_postings(touched, view)
        counts = np.fromiter((len(i) for i, _ in held.values()), dtype=np.int64, count=len(held))
        stored = int(counts.sum())
        every_id = np.concatenate([*(i for i, _ in held.values()), new_ids])
        every_code = np.concatenate([*(c for _, c in held.values()), new_codes])
        label = np.concatenate([np.repeat(np.arange(len(touched)), counts),
                                np.searchsorted(touched, target)])
        keep = np.ones(len(every_id), dtype=bool)
        if len(replaced):
            keep[:stored] = ~_members(every_id[:stored], np.sort(replaced))
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(label[rows], kind="stable")]  # one gather: kept, by posting
        all_ids, all_codes = every_id[rows], np.take(every_code, rows, axis=0)
        ends = np.cumsum(np.bincount(label[rows], minlength=len(touched))).tolist()
        postings = {pid: (all_ids[a:b], all_codes[a:b])
                    for pid, a, b in zip(touched.tolist(), [0, *ends[:-1]], ends)}
        return postings, len(rows) - stored

    def _read_postings(
        self, pids: np.ndarray, view: ReadView
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        code_size = view.codec.code_size
        out = {}
        for pid, blob in zip(pids.tolist(), self._storage.get_postings(pids)):
            if blob is None:
                out[pid] = (np.empty(0, np.int64), np.empty((0, code_size), np.uint8))
            else:
                out[pid] = decode_posting(blob, code_size)
        return out

    def _entries(self) -> int:
        """Posting entries stored (vectors counted once per posting holding them)."""
        return int(self._storage.get_meta("entries") or b"0")

    def _make_view(
        self, basis: Basis, router: Router, codec: Codec, entries: int | None = None,
        models: Models | None = None, config: IndexConfig | None = None,
    ) -> ReadView:
        entries = self._entries() if entries is None else entries
        mean_len = max(1.0, entries / max(router.size, 1))
        cfg = config or self.config
        return ReadView(
            self._storage, router, codec, cfg.metric, cfg.dim,
            posting_bytes=mean_len * (8 + codec.code_size), replica_cap=cfg.replica_cap,
            basis=basis, d_scan=codec.dim, d_rerank=cfg.rerank_dims,
            models=models or self._models, vector_dtype=cfg.vector_dtype,
        )

    def _require_view(self) -> ReadView:
        if self._view is None:
            raise EmptyCollectionError(f"collection at {self.path} is empty")
        return self._view

    def _check_open(self) -> None:
        if self._closed:
            raise CollectionClosedError(f"collection at {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._storage.config.read_only:
            raise FailedPreconditionError(f"collection at {self.path} was opened read-only")


class _ReadWriteLock:
    """Many readers at once, or one writer; a waiting writer holds back new readers, so a
    stream of searches cannot starve a write."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _members(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for an already sorted ``sorted_set``: a binary search
    per value instead of sorting the set again on every call (writes test each touched
    posting against the same batch of ids)."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values  # type: ignore[no-any-return]
