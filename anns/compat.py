"""Backward-compatible model upgrades: the basis transformation of a new embedding model into a
collection's space, fitted from paired embeddings, and the quality gate it must pass.

How a collection uses it (design note)
--------------------------------------
A collection's space is its current (old) model's space after the collection basis. A new model
version gets a :class:`ModelTransform`, fitted by :func:`fit_model_transform` from *pairs*: the
same items embedded by the old and the new model (rows match).

* ``matrix`` [new_dim, dim] maps a raw new-model vector into collection space, ``dim = old_dim
  + extra_dims``. Its first ``old_dim`` columns are the orthogonal Procrustes alignment of the
  new model onto the old space; the next ``extra_dims`` columns span what the alignment leaves
  of the new model (the orthogonal complement of the aligned subspace in new-model space,
  highest residual energy first). ``matrix @ matrix.T = I`` when all of that complement is kept,
  so new/new distances and inner products are exactly those of the raw new model.
* Old vectors stay as stored: they live on the first ``old_dim`` dims and are zero on the extra
  dims. A new vector is stored as ``x @ matrix`` (all dims); a new query maps the same way.
* new query vs new vector: all dims, the raw new model's scores.
  new query vs old vector: the first ``old_dim`` dims of the mapped query plus ``offset``
  (:meth:`ModelTransform.to_old_space`). The offset is the translation of full Procrustes
  analysis (both sides centred for the rotation, then ``mean_old - mean_new @ A``). For ``l2``
  it is the usual translation; for ``ip``/``cosine`` it only enters old-vector scores, as a
  query-independent prior ``<offset, o>`` per old vector. Measured on SciFact (old = static
  token-mean model, new = all-MiniLM-L6-v2, 2,000 pairs, 3 samples): nDCG@10 new/old 0.440-0.448
  with it against 0.419-0.430 for plain (uncentred, no offset) Procrustes; a least-squares
  scale on top of it made things far worse (0.14), so there is none.
* Scores of the two kinds are not on one scale: an old vector has no extra dims, and the mapped
  query's prefix carries only part of its energy. The report's ``calibration`` figures (mean
  top-10 score new/new against new/old on held-out pairs) measure the gap; mixed-version
  search must calibrate from them (the later step of the issue), not compare raw scores.

Fit rule for the extra dims (documented, measured): the alignment has full rank
``min(old_dim, new_dim)`` (on SciFact truncating it never earned held-out recall: rank 256 of
384 tied full rank at 2,000 pairs, lower ranks lost); of the complement, the fewest leading
residual axes are kept whose held-out new/new recall@10 through the transform reaches
``NEW_NEW_TARGET`` (99%) of the raw new model's. Extra dims only change new-vs-new scores (old
vectors are zero there), so recall of new/new is what they earn.

The gate (:func:`check_gate`) refuses, with the figures: fewer than ``PAIRS_PER_DIM`` pairs per
dimension (on SciFact new/old nDCG@10 stays below old/old at 500 pairs = 1.3/dim, is within
+-0.02 of it at 1,000 = 2.6/dim, and is clearly above from 2,000 = 5.2/dim), held-out new/old
recall@10 below old/old, new/old under ``CHANCE_FACTOR`` times chance (models that
disagree on what is similar), and new/new through the transform under ``NEW_NEW_TARGET`` of the
raw model (a map that is not orthonormal or drops dims the new model needs: on SciFact the
ridge baseline ties old/old on 400 held-out pairs at 2,000 pairs while its new/new is 0.25 and
its nDCG@10 half of old/old's), all overridable with ``force``; fewer than ``MIN_PAIRS`` pairs,
mismatched rows and non-finite values are refused before any fit. All figures are recall@10
on held-out pairs against the new model's exact neighbours among those items (each item its
own query, itself excluded). The shipped transform is refitted on all pairs with the chosen
``extra_dims``; the figures are those of the fit on the fit split (more pairs only help: see
the learning curve).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from anns.config import Metric
from anns.errors import (
    CorruptCollectionError,
    DTypeError,
    IncompatibleModelError,
    InvalidArgumentError,
    LimitExceededError,
    NonFiniteError,
)
from anns.evaluation import exact_knn
from anns.formats import pack_arrays, unpack_arrays

Method = Literal["bt2", "procrustes", "ridge"]

#: Version of the serialised form written by :meth:`ModelTransform.to_bytes`.
TRANSFORM_FORMAT = 1
#: Fewest pairs accepted at all (not overridable): below it nothing can be evaluated.
MIN_PAIRS = 100
#: Pairs per dimension (of the larger model) the gate asks for; overridable with ``force``.
PAIRS_PER_DIM = 4
#: Share of the raw new model's held-out recall@10 the extra dims must keep for new/new.
NEW_NEW_TARGET = 0.99
#: Share of the pairs held out for the report (at most MAX_HOLDOUT items).
HOLDOUT_FRACTION = 0.2
MAX_HOLDOUT = 2000
#: Ridge penalties tried by :func:`fit_ridge` (times the mean squared norm of a centred row).
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
K = 10
#: Most majorization steps of the alignment when new_dim > old_dim (see _align).
ALIGN_ITERATIONS = 500
#: new/old recall@10 under this multiple of chance (k / (held-out items - 1)) is refused: the
#: new model's neighbours cannot be predicted in the old space at all.
CHANCE_FACTOR = 3.0


@dataclass(frozen=True)
class ModelTransform:
    """A new model's map into collection space (see the module docstring).

    ``matrix`` float32 [new_dim, old_dim + extra_dims]; ``offset`` float32 [old_dim], added to
    a mapped query's first ``old_dim`` dims when it is scored against old vectors. Inputs of
    :meth:`apply` and :meth:`to_old_space` are raw new-model vectors, L2-normalised first for
    ``cosine`` (as the collection's validation gate leaves them).
    """

    method: str
    metric: Metric
    old_dim: int
    new_dim: int
    matrix: np.ndarray
    offset: np.ndarray

    @property
    def dim(self) -> int:
        """Dimension of collection space for this version (old_dim + extra_dims)."""
        return int(self.matrix.shape[1])

    @property
    def extra_dims(self) -> int:
        return self.dim - self.old_dim

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw new-model float32 [n, new_dim] -> collection space float32 [n, dim]."""
        return np.ascontiguousarray(np.asarray(x, np.float32) @ self.matrix)

    def to_old_space(self, x: np.ndarray) -> np.ndarray:
        """Raw new-model queries float32 [n, new_dim] -> float32 [n, old_dim], to be scored
        against stored old vectors with the collection's metric."""
        y = np.asarray(x, np.float32) @ self.matrix[:, : self.old_dim]
        return np.ascontiguousarray(y + self.offset)

    # --------------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        return pack_arrays(
            {"format": TRANSFORM_FORMAT, "method": self.method, "metric": self.metric,
             "old_dim": self.old_dim, "new_dim": self.new_dim},
            matrix=self.matrix, offset=self.offset,
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> ModelTransform:
        header, arrays = unpack_arrays(
            blob, "model transform", TRANSFORM_FORMAT, ("matrix", "offset"))
        matrix, offset = arrays["matrix"], arrays["offset"]
        old_dim, new_dim = int(header["old_dim"]), int(header["new_dim"])
        if matrix.ndim != 2 or matrix.shape[0] != new_dim or matrix.shape[1] < old_dim \
                or offset.shape != (old_dim,):
            raise CorruptCollectionError(
                f"the stored model transform has matrix {matrix.shape} and offset "
                f"{offset.shape}, inconsistent with old_dim {old_dim}, new_dim {new_dim}"
            )
        return cls(header["method"], header["metric"], old_dim, new_dim,
                   np.ascontiguousarray(matrix, np.float32), np.ascontiguousarray(offset, np.float32))


@dataclass
class CompatReport:
    """What a fit achieves, measured before it is activated. JSON-serialisable (:meth:`to_dict`).

    ``recall``: recall@10 on held-out pairs against the new model's exact neighbours among
    them: ``new_old`` (new queries, old vectors), ``old_old`` (not migrating), ``new_new``
    (through the transform; the raw new model scores 1 by construction). ``learning_curve``:
    the same figures for fits on growing subsets of the fit split, same held-out set.
    ``verdict``: "accepted", "refused" or "forced" (refused but registered with ``force``).
    """

    method: str
    metric: str
    n_pairs: int
    n_fit: int
    n_holdout: int
    old_dim: int
    new_dim: int
    extra_dims: int
    recall: dict[str, float]
    learning_curve: list[dict[str, float]]
    calibration: dict[str, float]
    min_pairs: int
    seed: int
    verdict: str = "accepted"
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The figures as a few lines of text (for error messages and the CLI)."""
        r = self.recall
        curve = ", ".join(
            f"{int(p['pairs'])}: {p['new_old']:.3f}" for p in self.learning_curve
        )
        return (
            f"{self.method} fit of {self.n_pairs} pairs ({self.n_fit} fit, {self.n_holdout} "
            f"held out), dims {self.new_dim} -> {self.old_dim} + {self.extra_dims} extra; "
            f"held-out recall@{K} against the new model's neighbours: new/old "
            f"{r['new_old']:.3f}, old/old {r['old_old']:.3f}, new/new through the transform "
            f"{r['new_new']:.3f} (raw 1.000); new/old by fit pairs (learning curve): {curve}"
        )


# ------------------------------------------------------------------------------ fits
def fit_model_transform(
    old_pairs: np.ndarray,
    new_pairs: np.ndarray,
    metric: Metric,
    *,
    method: Method = "bt2",
    seed: int = 0,
    force: bool = False,
    check: bool = True,
) -> tuple[ModelTransform, CompatReport]:
    """Fit a new model's transform into the old model's space from paired embeddings.

    ``old_pairs`` [n, old_dim] and ``new_pairs`` [n, new_dim] (any float dtype) are the same n
    items under the old and the new model (raw, before the collection basis). Holds out a
    seeded share of the pairs, fits on the rest, measures (:class:`CompatReport`), then refits
    on all pairs. ``method``: ``bt2`` (this module's fit), or the baselines ``procrustes``
    (plain orthogonal Procrustes) and ``ridge`` (affine ridge map). With ``check`` the gate
    runs (:func:`check_gate`); ``check=False`` only records its verdict (a dry run).

    Raises LimitExceededError (fewer than MIN_PAIRS pairs), InvalidArgumentError (row counts
    differ, not 2-D), DTypeError, NonFiniteError before fitting; with ``check``, the gate's
    errors after it (IncompatibleModelError).
    """
    old = _prepare(old_pairs, metric, "old")
    new = _prepare(new_pairs, metric, "new")
    if len(old) != len(new):
        raise InvalidArgumentError(
            f"paired embeddings must have the same rows: {len(old)} old, {len(new)} new"
        )
    n = len(old)
    if n < MIN_PAIRS:
        raise LimitExceededError(f"{n} pairs are too few to fit and evaluate; at least "
                                 f"{MIN_PAIRS} are needed")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_hold = min(MAX_HOLDOUT, max(K + 1, int(round(n * HOLDOUT_FRACTION))))
    hold, fit = order[:n_hold], order[n_hold:]
    extra: int | None = None
    transform = _fit(method, old[fit], new[fit], metric, None)
    if method == "bt2":
        extra = _choose_extra(transform, old[fit], new[fit], old[hold], new[hold], metric)
        transform = _fit(method, old[fit], new[fit], metric, extra)
    figures = evaluate_transform(transform, old[hold], new[hold], metric)
    curve = []
    for size in _curve_sizes(len(fit)):
        sub = fit[:size]
        t = _fit(method, old[sub], new[sub], metric, extra)
        curve.append({"pairs": float(size), **evaluate_transform(t, old[hold], new[hold], metric)})
    calibration = _calibration(transform, old[hold], new[hold], metric)
    final = _fit(method, old, new, metric, extra)
    report = CompatReport(
        method=method, metric=metric, n_pairs=n, n_fit=len(fit), n_holdout=n_hold,
        old_dim=old.shape[1], new_dim=new.shape[1], extra_dims=final.extra_dims,
        recall=figures, learning_curve=curve, calibration=calibration,
        min_pairs=PAIRS_PER_DIM * max(old.shape[1], new.shape[1]), seed=seed,
    )
    report.reasons = _refusals(report)
    if report.reasons:
        report.verdict = "forced" if force else "refused"
    if check:
        check_gate(report, force=force)
    return final, report


def check_gate(report: CompatReport, *, force: bool = False) -> None:
    """Raise IncompatibleModelError when the report's fit must not be activated (unless
    ``force``): too few pairs for its dims, held-out new/old below old/old, or new/old near
    chance. The message carries the reasons and the figures."""
    reasons = _refusals(report)
    if not reasons or force:
        return
    message = (f"model transform refused: {'; '.join(reasons)}. {report.summary()}. "
               f"Register anyway with force (--force).")
    raise IncompatibleModelError(message)


def fit_procrustes(old: np.ndarray, new: np.ndarray, metric: Metric) -> ModelTransform:
    """Baseline: plain orthogonal Procrustes (uncentred, no offset, no extra dims) of prepared
    float64 pairs; the map has orthonormal rows or columns, [new_dim, old_dim]."""
    u, _, vt = np.linalg.svd(new.T @ old, full_matrices=False)
    return _transform("procrustes", metric, old.shape[1], u @ vt, np.zeros(old.shape[1]))


def fit_ridge(
    old: np.ndarray, new: np.ndarray, metric: Metric, alpha: float | None = None
) -> ModelTransform:
    """Baseline: affine ridge map new -> old of prepared float64 pairs (not orthonormal; no
    extra dims). ``alpha`` scales the penalty by the mean squared norm of a centred new row;
    None picks it from RIDGE_ALPHAS by recall@10 new/old on a fifth of the pairs."""
    if alpha is None:
        cut = len(old) // 5
        scores = [
            evaluate_transform(fit_ridge(old[cut:], new[cut:], metric, a), old[:cut],
                               new[:cut], metric, new_new=False)["new_old"]
            for a in RIDGE_ALPHAS
        ]
        alpha = RIDGE_ALPHAS[int(np.argmax(scores))]
    mu_old, mu_new = old.mean(axis=0), new.mean(axis=0)
    xc = new - mu_new
    penalty = alpha * float((xc * xc).sum()) / len(xc)
    w = np.linalg.solve(xc.T @ xc + penalty * np.eye(new.shape[1]), xc.T @ (old - mu_old))
    return _transform("ridge", metric, old.shape[1], w, mu_old - mu_new @ w)


def fit_bt2(old: np.ndarray, new: np.ndarray, metric: Metric, extra: int | None) -> ModelTransform:
    """This module's fit on prepared float64 pairs: Procrustes of the centred pairs (full rank
    min(old_dim, new_dim)) plus the translation as ``offset``, then the first ``extra`` axes of
    the aligned subspace's complement in new-model space by residual energy (None: all)."""
    mu_old, mu_new = old.mean(axis=0), new.mean(axis=0)
    align = _align(new - mu_new, old - mu_old)
    axes = _complement_axes(new - mu_new if metric == "l2" else new, align)
    if extra is not None:
        axes = axes[:, :extra]
    return _transform("bt2", metric, old.shape[1], np.hstack([align, axes]),
                      mu_old - mu_new @ align)


# ------------------------------------------------------------------------- evaluation
def evaluate_transform(
    transform: ModelTransform, old: np.ndarray, new: np.ndarray, metric: Metric,
    *, k: int = K, new_new: bool = True,
) -> dict[str, float]:
    """recall@k of new/old, old/old and (with ``new_new``) new/new through the transform, on
    prepared pairs, each item a query against the others, against the raw new model's exact
    neighbours (the item itself excluded)."""
    score = "l2" if metric == "l2" else "ip"
    truth = _neighbours(new, new, k, score)
    out = {
        "new_old": _recall(_neighbours(old, transform.to_old_space(new), k, score), truth),
        "old_old": _recall(_neighbours(old, old, k, score), truth),
    }
    if new_new:
        mapped = transform.apply(new)
        out["new_new"] = _recall(_neighbours(mapped, mapped, k, score), truth)
    return out


def _calibration(t: ModelTransform, old: np.ndarray, new: np.ndarray,
                 metric: Metric) -> dict[str, float]:
    """Mean top-10 scores of new queries against new vectors (through the transform) and
    against old vectors: the gap mixed-version search has to bridge."""
    score = "l2" if metric == "l2" else "ip"
    mapped = t.apply(new)
    nn = exact_knn(mapped, mapped, K + 1, score)[1][:, 1:]
    no = exact_knn(old.astype(np.float32), t.to_old_space(new), K, score)[1]
    return {"new_new_top10_mean": float(nn.mean()), "new_old_top10_mean": float(no.mean())}


# --------------------------------------------------------------------------- helpers
def _prepare(x: np.ndarray, metric: Metric, side: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise DTypeError(f"{side} pairs must be a float array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidArgumentError(f"{side} pairs must be 2-D [n, dim], got shape {x.shape}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise NonFiniteError(f"{side} pairs hold NaN or Inf in {int(bad.sum())} rows "
                             f"(first: row {int(np.argmax(bad))})")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InvalidArgumentError(f"{side} pairs hold zero vectors, which have no cosine")
        x = x / norms
    return x


def _fit(method: Method, old: np.ndarray, new: np.ndarray, metric: Metric,
         extra: int | None) -> ModelTransform:
    if method == "bt2":
        return fit_bt2(old, new, metric, extra)
    if method == "procrustes":
        return fit_procrustes(old, new, metric)
    if method == "ridge":
        return fit_ridge(old, new, metric)
    raise InvalidArgumentError(f"unknown fit method {method!r}: bt2, procrustes or ridge")


def _align(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The orthonormal A [new_dim, old_dim] minimising ``|new @ A - old|`` (centred pairs).

    When new_dim <= old_dim, ``|new @ A|`` does not depend on A and one SVD solves it
    (orthogonal Procrustes). When new_dim > old_dim it does: the one-shot solution leans
    into new-model dims that merely correlate with the shared ones (on the synthetic data of
    tests/test_compat.py its mapped vectors are 29% off the true map's, 1.7% after this), so
    it is refined by majorization (Kiers 1990; Ten Berge
    & Knol 1984: ``A <- polar(C + (lambda I - M) A)``, monotone in the residual)."""
    n = len(new)
    cross = new.T @ old / n
    u, _, vt = np.linalg.svd(cross, full_matrices=False)
    align = u @ vt
    if new.shape[1] <= old.shape[1]:
        return align
    moment = new.T @ new / n
    shifted = np.linalg.eigvalsh(moment)[-1] * np.eye(len(moment)) - moment
    for _ in range(ALIGN_ITERATIONS):
        u, _, vt = np.linalg.svd(cross + shifted @ align, full_matrices=False)
        step = u @ vt
        done = np.abs(step - align).max() < 1e-7
        align = step
        if done:
            break
    return align


def _complement_axes(new: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """Orthonormal axes [new_dim, new_dim - rank] of new-model space orthogonal to the columns
    of ``aligned``, by the energy of ``new`` along them (highest first, signs fixed)."""
    q, _ = np.linalg.qr(aligned, mode="complete")
    rest = q[:, aligned.shape[1]:]
    if rest.shape[1] == 0:
        return rest
    residual = new @ rest
    values, vectors = np.linalg.eigh(residual.T @ residual)
    axes = rest @ vectors[:, np.argsort(values)[::-1]]
    flip = axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])] < 0
    axes[:, flip] *= -1.0
    return axes


def _choose_extra(full: ModelTransform, old: np.ndarray, new: np.ndarray, old_val: np.ndarray,
                  new_val: np.ndarray, metric: Metric) -> int:
    """Fewest extra dims whose new/new recall@10 on ``*_val`` reaches NEW_NEW_TARGET
    (bisection: recall grows with the kept axes; all of them keep it exactly)."""
    score = "l2" if metric == "l2" else "ip"
    truth = _neighbours(new_val, new_val, K, score)
    lo, hi = 0, full.extra_dims
    while lo < hi:
        mid = (lo + hi) // 2
        mapped = fit_bt2(old, new, metric, mid).apply(new_val)
        if _recall(_neighbours(mapped, mapped, K, score), truth) >= NEW_NEW_TARGET:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _curve_sizes(n_fit: int) -> list[int]:
    """Subset sizes n/8, n/4, n/2, n (those of at least MIN_PAIRS / 2, and always n)."""
    sizes = [n_fit // 8, n_fit // 4, n_fit // 2]
    return [s for s in sizes if s >= MIN_PAIRS // 2] + [n_fit]


def _neighbours(gallery: np.ndarray, queries: np.ndarray, k: int, score: str) -> np.ndarray:
    """ids [n, k] of each query's k nearest in ``gallery`` (same rows = same items), the
    query's own row excluded."""
    ids, _ = exact_knn(gallery.astype(np.float32), queries.astype(np.float32),
                       min(k + 1, len(gallery)), score)  # type: ignore[arg-type]
    own = ids == np.arange(len(queries))[:, None]
    keep = ~own
    keep[own.sum(axis=1) == 0, -1] = False  # self not found: drop the last instead
    return ids[keep].reshape(len(queries), -1)[:, :k]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return float(hits) / truth.size


def _refusals(report: CompatReport) -> list[str]:
    reasons = []
    if report.n_pairs < report.min_pairs:
        reasons.append(
            f"too few pairs: {report.n_pairs} < {PAIRS_PER_DIM} per dim x "
            f"{max(report.old_dim, report.new_dim)} dims = {report.min_pairs}"
        )
    r = report.recall
    if r["new_old"] < r["old_old"]:
        reasons.append(
            f"new/old recall@{K} {r['new_old']:.3f} is below old/old {r['old_old']:.3f}: the "
            f"new model's queries would do worse than not migrating"
        )
    if r.get("new_new", 1.0) < NEW_NEW_TARGET:
        reasons.append(
            f"new/new recall@{K} through the transform {r['new_new']:.3f} is under "
            f"{NEW_NEW_TARGET:g} of the raw new model's: the map loses the new model's own "
            f"geometry, so its queries would search backfilled vectors worse than the model"
        )
    chance = K / (report.n_holdout - 1)
    if r["new_old"] < CHANCE_FACTOR * chance:
        reasons.append(
            f"new/old recall@{K} {r['new_old']:.3f} is under {CHANCE_FACTOR:g} x chance "
            f"({chance:.3f}): the models disagree on what is similar"
        )
    return reasons


def _transform(method: str, metric: Metric, old_dim: int, matrix: np.ndarray,
               offset: np.ndarray) -> ModelTransform:
    return ModelTransform(method, metric, old_dim, matrix.shape[0],
                          np.ascontiguousarray(matrix, np.float32),
                          np.ascontiguousarray(offset, np.float32))
