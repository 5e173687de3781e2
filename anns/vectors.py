"""The one validation gate: everything past it may assume clean, canonical arrays.

Vectors leave here float32, C-contiguous, shape [n, dim], finite (and unit-norm for the cosine
metric); ids leave as int64 [n], non-negative and unique within the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anns.config import MAX_K, Metric
from anns.errors import (
    DimensionMismatchError,
    DTypeError,
    DuplicateIdsError,
    InvalidArgumentError,
    LimitExceededError,
    NonFiniteError,
)
from anns.formats import drop_resident_pages

#: Ids are stored as 8-byte big-endian keys; -1 is the padding value of search results.
MAX_ID = np.iinfo(np.int64).max


def as_vectors(
    x: Any, dim: int, *, metric: Metric = "l2", what: str = "vector",
    rows: np.ndarray | None = None, of: str = "collection",
) -> np.ndarray:
    """Validate ``x`` as a batch of ``dim``-dimensional vectors.

    A 1-D input of length ``dim`` is taken as a batch of one, an empty one (``[]``) as an
    empty batch. Integer and float inputs are
    converted to float32; anything else (bool, complex, strings, objects) is a DTypeError. For
    ``metric="cosine"`` rows are L2-normalised (a zero row is an error: it has no direction).
    ``rows``: the input's row numbers of ``x``'s rows (a sample of it), for the errors to name;
    ``of``: whose dim ``dim`` is, for them too (e.g. ``"model 'v2'"``).

    Returns a float32 C-contiguous array of shape [n, dim] (a copy when conversion was needed).
    """
    arr = np.asarray(x)
    whats = _plural(what)
    if arr.dtype.kind not in "fiu":
        raise DTypeError(f"{whats} must be a float or integer array, got dtype {arr.dtype}")
    if arr.ndim == 1:  # one vector; an empty list is an empty batch
        arr = arr.reshape(0 if arr.size == 0 else 1, dim if arr.size == 0 else -1)
    if arr.ndim != 2:
        raise DimensionMismatchError(
            f"{whats} must be a 2-D array [n, {dim}], got shape {arr.shape}"
        )
    if arr.shape[1] != dim:
        raise DimensionMismatchError(
            f"{what} dim {arr.shape[1]} does not match {of} dim {dim}"
        )
    with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    # Checked after the conversion: float64 values beyond float32's range become inf.
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        first = int(bad[0] if rows is None else rows[bad[0]])
        raise NonFiniteError(
            f"{whats} hold NaN or Inf (as float32) in {bad.size} row(s), first at row {first}"
        )
    if metric == "cosine":
        out = normalized(out, what=what, rows=rows)
    return out


def _plural(what: str) -> str:
    """"query" -> "queries", "vector" -> "vectors", "old pairs" as it is."""
    if what.endswith("s"):
        return what
    return what[:-1] + "ies" if what.endswith("y") else what + "s"


def check_storable(
    x: np.ndarray, dtype: str, *, what: str = "vector", rows: np.ndarray | None = None,
    convert: bool = True,
) -> np.ndarray:
    """``x`` (validated float32 [n, dim]) as ``dtype`` ("uint8" / "int8"), exactly: every value
    must be an integer in the type's range (InvalidArgumentError naming the first that is
    not, by its number in ``rows`` when given: the input's row numbers of ``x``'s rows).
    ``float32``, or ``convert=False`` (a check only), returns ``x`` itself."""
    if dtype == "float32":
        return x
    info = np.iinfo(dtype)
    bad = (x < info.min) | (x > info.max) | (x != np.rint(x))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        shown = row if rows is None else int(rows[row])
        raise InvalidArgumentError(
            f"{_plural(what)} are stored as {dtype} (integers {info.min}..{info.max}): row {shown}, "
            f"dim {col} holds {float(x[row, col])!r} in {int(bad.any(axis=1).sum())} bad row(s)"
        )
    return x.astype(dtype) if convert else x


def integer_dtype(*arrays: np.ndarray, rows: int = 4096) -> str:
    """"uint8" or "int8" when every value of ``arrays`` is an integer in that type's range
    (pixels, SIFT-like descriptors), else "float32": the ``vector_dtype`` that stores them
    exactly in the fewest bytes. One pass, a block of ``rows`` at a time, dropping a mapped
    file's pages after each (a check must not fill the process's RSS with the input)."""
    low, high = np.inf, -np.inf
    for x in arrays:
        for s in range(0, len(x), rows):
            block = np.array(x[s : s + rows], dtype=np.float32)
            drop_resident_pages(x)
            if block.size == 0:
                continue
            if not (block == np.rint(block)).all():
                return "float32"
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    for dtype in ("uint8", "int8"):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max or low > high:  # (low > high: no values)
            return dtype
    return "float32"


def normalized(
    x: np.ndarray, *, what: str = "vector", rows: np.ndarray | None = None
) -> np.ndarray:
    """Return the rows of float32 ``x`` scaled to unit L2 norm; zero rows are an error (named
    by their number in ``rows`` when given, as in :func:`as_vectors`)."""
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        first = int(np.flatnonzero(zero)[0])
        raise InvalidArgumentError(
            f"{what} at row {first if rows is None else int(rows[first])} has zero norm: "
            "it has no direction under the cosine metric"
        )
    return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)


def as_ids(ids: Any, n: int | None = None, *, what: str = "ids") -> np.ndarray:
    """Validate ``ids`` as unique non-negative integers; returns int64 [n].

    ``n``, when given, is the number of vectors the ids label.
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
        else:
            raise DTypeError(f"{what} must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{what} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InvalidArgumentError(f"got {arr.shape[0]} {what} for {n} vectors")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > MAX_ID:
        raise InvalidArgumentError(f"{what} must be at most {MAX_ID}, got {int(arr.max())}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if out.size and int(out.min()) < 0:
        raise InvalidArgumentError(
            f"{what} must be non-negative (-1 marks padding in results), got {int(out.min())}"
        )
    if out.size > 1:
        s = np.sort(out)
        dup = s[1:][s[1:] == s[:-1]]
        if dup.size:
            shown = ", ".join(str(v) for v in np.unique(dup)[:5])
            raise DuplicateIdsError(f"duplicate {what} in one batch: {shown}")
    return out


def check_k(k: Any) -> int:
    """Validate a search's k: an integer in [1, MAX_K]."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise DTypeError(f"k must be an integer, got {type(k).__name__}")
    if k <= 0:
        raise InvalidArgumentError(f"k must be positive, got {k}")
    if k > MAX_K:
        raise LimitExceededError(f"k {k} exceeds the limit of {MAX_K}")
    return int(k)


def prefix(x: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` columns of validated vectors, C-contiguous (what faiss needs): the
    view of a stage that uses a prefix of the collection space."""
    return x if dims == x.shape[1] else np.ascontiguousarray(x[:, :dims])
