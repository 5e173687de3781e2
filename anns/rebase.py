"""Rebase: rebuild a migrated collection's space, routing and codes in its new model's space.

After a model upgrade (:mod:`anns.models`) the collection space is still the *base* model's:
routing and codes read the first dims of every vector's base-space image, and what the new
model adds beyond the old (its extra dims) only reaches the exact rerank. Once every vector
is stored under the new version and the base model is retired, :meth:`anns.Collection.rebase`
makes the new model's own space the collection space:

1. Every stored vector ``s`` (the version's stored form: ``x @ M`` plus the translation
   offset on the base dims) gives back ``z = x @ M`` (offset removed; ``M`` the version's
   orthonormal map, so ``z`` keeps every distance of the raw model).
2. Their principal axes ``R`` order the dims by the new model's energy (as many as the model
   has dims: a model narrower than the old space spans only that many), and a bulk build
   (:mod:`anns.bulk`, the stages of ``anns build``) runs over ``z @ R``: balanced
   clustering on the ``d_route`` prefix, the codec on the ``d_scan`` prefix, closure
   replicas with the RNG rule, the per-posting cap.
3. The version's map becomes ``M @ R`` with no offset and no extra dims (its stored form is
   the whole collection space), the collection basis the identity (with ``R``'s energy per
   dim): nothing is left that speaks the old space. The version takes index 0 (its vectors
   are stored without a version trailer), so the read path scores them as a single-model
   collection's, not version by version.

Online: the new vectors, records, postings, router, codec and models are written in **one
atomic WriteBatch** and swapped in with the read view, so searches answer throughout on the old
state and see the new one at once; writes wait. The batch holds a copy of every stored vector
(memory about twice the vectors' bytes, as for :meth:`anns.Collection.recode`'s codes).
Tuned profiles were measured on the old routing and are dropped: run ``anns tune`` again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from anns.basis import Basis
from anns.compat import ModelTransform
from anns.config import IndexConfig, validated
from anns.errors import FailedPreconditionError
from anns.memory import release_freed_heap
from anns.models import ModelVersion, Models
from anns.storage import Batch, Storage, decode_vectors

if TYPE_CHECKING:
    from anns.index import Collection

log = logging.getLogger(__name__)

#: Stored vectors read per multi-get while collecting them.
_READ_ROWS = 8192


@dataclass(frozen=True)
class RebaseReport:
    """What a rebase did: the version now spanning the collection space, its ``dim`` (the
    new collection dim), vectors rewritten, postings before and after, seconds."""

    model: str
    dim: int
    vectors: int
    postings_before: int
    postings_after: int
    seconds: float
    energy_route: float
    """Share of the vectors' energy the new ``d_route`` prefix keeps."""
    energy_scan: float
    """Share the new ``d_scan`` prefix keeps."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _OneBatch:
    """The slice of :class:`~anns.storage.Storage` a bulk build writes through, collecting
    every write into one batch instead (applied atomically by the caller)."""

    def __init__(self, storage: Storage) -> None:
        self.batch_ = storage.batch()

    def batch(self) -> Batch:
        return self.batch_

    def write(self, batch: Batch, **_: Any) -> None:
        """Nothing yet: the caller writes :attr:`batch_` once, when everything is in it."""

    def flush(self) -> None:
        """Nothing to flush: nothing was written."""


def sole_version(models: Models) -> ModelVersion:
    """The version a rebase moves the collection to: the only one registered, and not the
    base model (whose space the collection space already is)."""
    if len(models.versions) != 1:
        names = ", ".join(v.name for v in models.versions)
        raise FailedPreconditionError(
            f"rebase needs exactly one registered model version, found {names}: backfill "
            f"every vector under the new version and retire the others first"
        )
    version = models.versions[0]
    if version.is_base:
        raise FailedPreconditionError(
            f"the collection space is already model {version.name!r}'s: nothing to rebase"
        )
    return version


def rebase(coll: Collection, *, seed: int | None = None) -> RebaseReport:
    """See :meth:`anns.Collection.rebase` (the caller holds the collection's write lock)."""
    from anns.bulk import _Builder

    started = time.perf_counter()
    version = sole_version(coll._models)
    transform = version.transform
    assert transform is not None
    view = coll._require_view()
    storage = coll._storage
    ids, z = _unshifted(storage, coll.dim, view.vector_dtype, version, transform)
    # the new space: principal axes of the vectors, as many as the model has dims (a model
    # narrower than the old space spans only that many of its dims)
    fitted = Basis.fit_pca(z, coll.config.metric)
    assert fitted.matrix is not None
    dim = min(transform.dim, transform.new_dim)
    axes = np.ascontiguousarray(fitted.matrix[:, :dim])
    z = _rotated(z, axes)

    fields = coll.config.model_dump()
    # the new model's vectors are floats: they are stored (as float32) in the new space
    fields.update(dim=dim, matryoshka=False, vector_dtype="float32")
    if seed is not None:
        fields["seed"] = seed
    config = validated(IndexConfig, **fields)
    sink = _OneBatch(storage)
    # the vectors are in the new space already: the build keeps them as they are
    builder = _Builder(sink, config.model_copy(update={"matryoshka": True}), z, ids,
                       progress=False, version=0)  # type: ignore[arg-type]
    router, codec = builder._train()
    rep, dist, router = builder._assign(router)
    posting, row = builder._cap(rep, dist)
    del rep, dist
    posting, router = builder._drop_empty(posting, router)
    builder._write_vectors_and_records(posting, row)
    builder._write_postings(posting, row, codec, router.size)
    del z, builder
    release_freed_heap()

    # the version now maps straight onto the whole (new) collection space
    moved = ModelTransform(
        "rebased", transform.metric, dim, transform.new_dim,
        np.ascontiguousarray(transform.matrix @ axes, dtype=np.float32), np.zeros(dim, np.float32),
    )
    # index 0: its vectors are stored as a base model's are (no version trailer), and the
    # read path takes them as one model's (no per-version scoring)
    rebased = ModelVersion(version.name, 0, version.dim, moved)
    models = Models((rebased,), rebased.name, coll._models.next_index, coll._models.retired)
    energy = fitted.energy[:dim] / max(float(fitted.energy[:dim].sum()), 1e-30)
    basis = Basis("identity", dim, None, energy)

    batch = sink.batch_
    for pid in range(router.size, view.router.size):  # postings past the new ones
        batch.delete_posting(pid)
    batch.put_meta("basis", basis.to_bytes())
    batch.put_meta("router", router.to_bytes())
    batch.put_meta("codec", codec.to_bytes())
    batch.put_meta("config", config.model_dump_json().encode())
    batch.put_meta("entries", str(len(posting)).encode())
    batch.put_meta(f"model/{rebased.name}", moved.to_bytes())
    batch.put_meta("model_counts", json.dumps({rebased.name: len(ids)}).encode())
    batch.delete_meta("profiles")
    coll._swap_space(batch, config, basis, router, codec, models, entries=len(posting))
    report = RebaseReport(
        rebased.name, config.dim, len(ids), view.router.size, router.size,
        round(time.perf_counter() - started, 3),
        round(basis.prefix_energy(config.route_dims), 4),
        round(basis.prefix_energy(config.scan_dims), 4),
    )
    log.info("rebased the collection onto model %r: %s", rebased.name, report.to_dict())
    return report


def _unshifted(
    storage: Storage, dim: int, dtype: str, version: ModelVersion, transform: ModelTransform
) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector's ``x @ M`` (its stored form less the offset), float32 [n, width],
    with the ids (ascending)."""
    ids = storage.vector_ids()
    z = np.empty((len(ids), transform.dim), dtype=np.float32)
    for s in range(0, len(ids), _READ_ROWS):
        part = ids[s : s + _READ_ROWS]
        rows, versions = decode_vectors(storage.get_vectors(part), dim, dtype)  # type: ignore[arg-type]
        if (versions != version.index).any() or rows.shape[1] != transform.dim:
            raise FailedPreconditionError(
                f"vectors of another model version than {version.name!r} are stored; "
                f"backfill them first"
            )
        z[s : s + len(part)] = rows
    z[:, : transform.old_dim] -= transform.offset
    return ids, z


def _rotated(z: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """``z @ axes`` (float32 [n, axes columns]), a bounded block of rows at a time."""
    out = np.empty((len(z), axes.shape[1]), dtype=np.float32)
    step = max(1, (16 << 20) // (4 * z.shape[1]))
    for s in range(0, len(z), step):
        out[s : s + step] = z[s : s + step] @ axes
    return out
