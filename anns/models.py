"""Model versions of a collection: which embedding models its vectors and queries come from, and
how each maps into the collection space.

A collection starts with one model, its base model ``"default"`` (dim = ``config.dim``; its
map into collection space is the collection basis). A new version is registered from paired
embeddings (:meth:`anns.Collection.add_model`): the pairs' old side is the base model's, mapped
through the collection basis first, so the fitted :class:`~anns.compat.ModelTransform` lands
directly in collection space. One version is *current*: writes and queries that name none use
it. Every stored vector records its version (record flags and vector trailer, see
:mod:`anns.storage`).

Stored form (what routing, codes and the rerank read)
------------------------------------------------------
Every vector's first ``dim`` (base) dims hold its **base-space image**: the base model's vector
through the basis, or a new version's ``to_old_space`` (aligned part plus the translation
offset). A new version's extra dims follow. Routing (d_route prefix) and codes (d_scan prefix)
read only the shared leading dims, so centroids, codec and postings need no change when a
version is added, and vectors of every version sit in the same postings.

Scores (see :func:`anns.search._rerank`)
----------------------------------------
* same version: all its dims, the model's own score (for ``ip``/``cosine`` the offset is taken
  back out: exactly the raw new model's inner product; for ``l2`` it cancels).
* different versions: the base-space images on the first ``dim`` dims, then mapped by the
  version's affine **calibration** ``a * s + b`` onto the scale of same-version scores
  (:func:`fit_calibration`): a cross-version score predicts what the item would score once
  re-embedded. Why and how it was chosen: README, "Model versions"; measured by
  ``bench/mixed_versions.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from anns.basis import Basis
from anns.compat import ModelTransform
from anns.config import Metric
from anns.errors import InvalidArgumentError, NotFoundError
from anns.evaluation import exact_knn

BASE = "default"
#: Candidates per held-out query the calibration is fitted on (the ranks that matter).
CALIBRATION_K = 10


@dataclass(frozen=True)
class ModelVersion:
    """One embedding model of a collection. ``index`` is what stored records carry (0: base).

    ``calibration`` maps a cross-version score of this model's *queries* (against vectors of
    another version) and of other versions' queries against *this* model's vectors onto the
    scale of same-version scores: ``{"query": [a, b], "vector": [a, b]}``; identity for the
    base.
    """

    name: str
    index: int
    dim: int
    transform: ModelTransform | None = None
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def is_base(self) -> bool:
        return self.transform is None

    @property
    def owner(self) -> str:
        """Whose dim this version's is, as errors name it: the collection's for the base."""
        return "collection" if self.transform is None else f"model {self.name!r}"

    def width(self, base_dim: int) -> int:
        """Floats of one stored vector of this version."""
        return base_dim if self.transform is None else self.transform.dim

    def base_image(self, x: np.ndarray, basis: Basis) -> np.ndarray:
        """Validated raw vectors [n, dim] -> float32 [n, base dim]: the base-space image."""
        if self.transform is None:
            return basis.apply(x)
        return self.transform.to_old_space(x)

    def stored_form(self, x: np.ndarray, basis: Basis) -> np.ndarray:
        """Validated raw vectors [n, dim] -> float32 [n, width]: base-space image, extras."""
        if self.transform is None:
            return basis.apply(x)
        t = self.transform
        # one product for both parts: the image is apply's first old_dim dims plus the offset
        y = t.apply(x)
        y[:, : t.old_dim] += t.offset
        return y

    def affine(self, side: str) -> tuple[float, float]:
        a, b = self.calibration.get(side, (1.0, 0.0))
        return float(a), float(b)


@dataclass(frozen=True)
class Models:
    """The registered versions (retired ones are gone), the current one, the next index."""

    versions: tuple[ModelVersion, ...]
    current: str = BASE
    next_index: int = 1
    retired: tuple[str, ...] = ()

    @classmethod
    def base_only(cls, dim: int) -> Models:
        return cls((ModelVersion(BASE, 0, dim),))

    def get(self, name: str | None) -> ModelVersion:
        """The version called ``name`` (None or "": the current one); NotFoundError else."""
        name = name or self.current
        for v in self.versions:
            if v.name == name:
                return v
        retired = " (retired)" if name in self.retired else ""
        raise NotFoundError(
            f"model {name!r} is not registered in this collection{retired}; registered: "
            f"{', '.join(v.name for v in self.versions)}"
        )

    def by_index(self) -> dict[int, ModelVersion]:
        return {v.index: v for v in self.versions}

    @property
    def mixed(self) -> bool:
        """Whether stored vectors may differ in version (and width): more than one version,
        or one whose vectors carry a version index. A lone version at index 0 (the base
        model, or one a rebase moved there) is read like a single-model collection."""
        return len(self.versions) > 1 or self.versions[0].index != 0

    def with_version(self, version: ModelVersion, *, current: bool) -> Models:
        return Models(self.versions + (version,), version.name if current else self.current,
                      self.next_index + 1, self.retired)

    def without(self, name: str) -> Models:
        return Models(tuple(v for v in self.versions if v.name != name), self.current,
                      self.next_index, self.retired + (name,))

    def with_current(self, name: str) -> Models:
        return replace(self, current=self.get(name).name)

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> bytes:
        return json.dumps({
            "current": self.current, "next_index": self.next_index,
            "retired": list(self.retired),
            "versions": [{"name": v.name, "index": v.index, "dim": v.dim,
                          "calibration": {k: list(ab) for k, ab in v.calibration.items()}}
                         for v in self.versions],
        }).encode()

    @classmethod
    def from_meta(cls, blob: bytes | None, transforms: dict[str, bytes | None],
                  base_dim: int) -> Models:
        """From meta ``models`` and the ``model/<name>`` blobs (None: a base-only collection,
        as every format 1-2 collection is)."""
        if blob is None:
            return cls.base_only(base_dim)
        raw = json.loads(blob)
        versions = []
        for v in raw["versions"]:
            t = transforms.get(v["name"])
            versions.append(ModelVersion(
                v["name"], int(v["index"]), int(v["dim"]),
                ModelTransform.from_bytes(t) if t is not None else None,
                {k: (float(ab[0]), float(ab[1])) for k, ab in v["calibration"].items()},
            ))
        return cls(tuple(versions), raw["current"], int(raw["next_index"]),
                   tuple(raw.get("retired", ())))


def check_name(name: str) -> str:
    """A model name: 1-64 characters of letters, digits, ``-``, ``_``, ``.``."""
    if not (0 < len(name) <= 64) or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidArgumentError(
            f"model name {name!r} must be 1-64 letters, digits, '-', '_' or '.'"
        )
    return name


# ----------------------------------------------------------------------- calibration
def fit_calibration(transform: ModelTransform, old: np.ndarray, new: np.ndarray,
                    metric: Metric) -> dict[str, tuple[float, float]]:
    """Affine maps of cross-version scores onto same-version ones, from held-out pairs
    (float32, old side already in collection space, both normalised for cosine).

    ``query``: new-model query vs an old vector, regressed onto the new/new score of the same
    item (what it will score once backfilled). ``vector``: base query vs a new vector's image,
    regressed onto the old/old score of the same item. Fitted by least squares over each
    query's ``CALIBRATION_K`` best cross-version candidates (the ranks a top-k list is made
    of), itself excluded.
    """
    score = "l2" if metric == "l2" else "ip"
    n = len(old)
    k = min(CALIBRATION_K + 1, n)
    q_new_img = transform.to_old_space(new)
    new_full = transform.apply(new)
    new_img = q_new_img  # a new vector's base-space image is the same map
    out = {}
    for side, queries, gallery, same_q, same_g in (
        ("query", q_new_img, old, new_full, new_full),
        ("vector", old, new_img, old, old),
    ):
        ids, _ = exact_knn(gallery.astype(np.float32), queries.astype(np.float32), k, score)
        rows = np.repeat(np.arange(n), k).reshape(n, k)
        keep = (ids != rows) & (ids >= 0)
        qi, gi = rows[keep], ids[keep]
        cross = _pair_scores(queries[qi], gallery[gi], metric)
        same = _pair_scores(same_q[qi], same_g[gi], metric)
        a, b = np.polyfit(cross.astype(np.float64), same.astype(np.float64), 1)
        out[side] = (float(a), float(b))
    return out


def _pair_scores(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.ndarray:
    if metric == "l2":
        d = a - b
        return np.einsum("ij,ij->i", d, d)
    return np.einsum("ij,ij->i", a, b)


def describe(models: Models, counts: dict[str, int], base_dim: int) -> dict[str, Any]:
    """The ``models`` part of :meth:`anns.Collection.info`."""
    return {
        "current": models.current,
        "retired": list(models.retired),
        "versions": {
            v.name: {"index": v.index, "dim": v.dim, "width": v.width(base_dim),
                     "extra_dims": v.width(base_dim) - base_dim,
                     "count": int(counts.get(v.name, 0)),
                     "calibration": {k: list(ab) for k, ab in v.calibration.items()}}
            for v in models.versions
        },
    }
