"""Backfill: re-store items under a model version, in atomic batches, resumable.

Each batch is one :meth:`anns.Collection.upsert` under the version *and* the job's checkpoint
(meta ``backfill/<model>``: the input's fingerprint and the rows done), written in the same
atomic WriteBatch: after a kill the checkpoint names exactly the batches that are stored, so a
rerun with the same input resumes after them, losing and repeating nothing. The fingerprint is
a SHA-256 of the model name, the shapes and all ids and vector bytes: another input starts
from its first row. Searches answer throughout, each item under its old or its new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from anns.errors import DimensionMismatchError, DTypeError, DuplicateIdsError, InvalidArgumentError
from anns.vectors import as_ids, as_vectors

if TYPE_CHECKING:
    from anns.index import Collection

log = logging.getLogger(__name__)

#: Rows per atomic batch by default (about 8 MiB of 128-d float32 input).
DEFAULT_BATCH_ROWS = 16384
_HASH_ROWS = 65536


@dataclass(frozen=True)
class BackfillReport:
    """What one backfill run did: ``rows`` of the input, ``resumed_at`` (rows a checkpoint
    said were done), ``written`` this run, ``batches`` this run, ``seconds``."""

    model: str
    rows: int
    resumed_at: int
    written: int
    batches: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "vectors_per_second":
                round(self.written / self.seconds, 1) if self.seconds else None}


def checkpoint_key(model: str) -> str:
    return f"backfill/{model}"


def fingerprint(
    model: str, vectors: Any, ids: np.ndarray, check: Callable[[np.ndarray, np.ndarray], Any]
    | None = None,
) -> str:
    """The input's hash (model, shape, dtype, ids, rows), read in bounded chunks; ``check``
    (rows, their row numbers) sees every chunk on the way, so a bad row is refused before
    the first batch is written."""
    h = hashlib.sha256(f"{model}|{tuple(vectors.shape)}|{vectors.dtype.str}".encode())
    h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    for s in range(0, len(vectors), _HASH_ROWS):  # bounded memory on memory-mapped input
        rows = np.ascontiguousarray(vectors[s : s + _HASH_ROWS])
        if check is not None:
            check(rows, np.arange(s, s + len(rows)))
        h.update(rows.tobytes())
    return h.hexdigest()


def backfill(
    coll: Collection,
    model: str,
    vectors: Any,
    ids: Any,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> BackfillReport:
    """See :meth:`anns.Collection.backfill`."""
    version = coll._models.get(model)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int | np.integer):
        raise DTypeError(f"batch_rows must be an integer, got {batch_rows!r}")
    if batch_rows < 1:
        raise InvalidArgumentError(f"batch_rows must be at least 1, got {batch_rows}")
    if getattr(vectors, "ndim", 0) != 2:
        vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != version.dim:
        raise DimensionMismatchError(
            f"backfill vectors have shape {tuple(vectors.shape)}; model {version.name!r} "
            f"embeds {version.dim} dims")
    ids = as_ids(np.asarray(ids), len(vectors)) if len(vectors) else np.empty(0, np.int64)
    if len(np.unique(ids)) != len(ids):
        raise DuplicateIdsError("backfill ids repeat: every item is re-stored once")
    key = checkpoint_key(version.name)
    metric = coll.config.metric

    def check(rows: np.ndarray, numbers: np.ndarray) -> None:
        as_vectors(rows, version.dim, metric=metric, what="backfill vector", rows=numbers,
                   of=version.owner)

    fp = fingerprint(version.name, vectors, ids, check)
    saved = coll._storage.get_meta(key)
    start = 0
    if saved is not None:
        state = json.loads(saved)
        if state.get("fingerprint") == fp:
            start = int(state["done"])
            log.info("backfill of %r resumes at row %d of %d", version.name, start, len(ids))
        else:
            log.info("backfill of %r: another input than the checkpoint's; starting over",
                     version.name)
    t0 = time.perf_counter()
    batches = 0
    with tqdm(total=len(ids), initial=start, unit="vec", unit_scale=True, disable=progress is False
              if progress is not None else None, desc=f"backfill {version.name}") as bar:
        for s in range(start, len(ids), batch_rows):
            part = np.asarray(vectors[s : s + batch_rows])
            done = min(s + batch_rows, len(ids))
            state_blob = json.dumps({"fingerprint": fp, "done": done, "rows": len(ids)}).encode()
            coll._write(part, ids[s:done], replace=True, model=version.name,
                        meta={key: state_blob})
            batches += 1
            bar.update(done - s)
            if on_batch is not None:
                on_batch(done)
    if start >= len(ids) and saved is None:  # empty input: still leave a finished checkpoint
        coll._set_meta(key, json.dumps({"fingerprint": fp, "done": 0, "rows": 0}).encode())
    seconds = time.perf_counter() - t0
    return BackfillReport(version.name, len(ids), start, len(ids) - start, batches,
                          round(seconds, 3))
