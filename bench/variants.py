"""The anns builds an ``anns bench --adaptive`` run compares (issue 3: AdANNS on the hybrid index).

Each :class:`AnnsVariant` is one build (IndexConfig fields) served with its own sweep of
search knobs; its rows carry its ``label`` as ``variant``. :func:`adaptive_variants` chooses
them from the data:

* ``full-precision``: ``flat`` codec, float32 codes of all dims (4 bytes per dim): the scan
  sees the exact vectors. The reference for "bytes read at most 1/4 of the same engine with
  full-precision postings".
* ``sq8``: one byte per dim over all dims (the library default before issue 3).
* ``rigid``: ``opq`` with ``M`` bytes per vector, every stage at the full dim
  (d_route = d_scan = d_rerank = dim).
* ``adaptive``: ``opq`` with the same ``M`` bytes (equal bytes per vector), codes of a prefix
  ``d_scan``, centroids on a shorter prefix ``d_route``. For l2 and ip the prefix codes also
  carry the tail norm (:class:`anns.quantization.TailCodec`, two bytes), so they get ``M - 2``
  sub-quantizers (62 of the 128-dim prefix: the OPQ rotation then projects onto 124 dims). At
  build the collection is tuned for recall 0.95 (:meth:`anns.Collection.tune`, which also
  picks a shorter routing prefix, the rerank dims, eps2, refine_factor and max_postings), and
  its sweep adds the tuned profile and a max_postings ladder at the tuned knobs.
* ``opq-full-M/2`` and ``opq-prefix-M/2`` (AdANNS-OPQ): half the bytes, coding the full vector
  or the adaptive's prefix ``d_scan`` (the same routing prefix and tail norm too). So
  prefix-M/2 against adaptive isolates the bytes, and prefix-M/2 against full-M/2 the prefix.
  (On Fashion-MNIST 32-byte codes of the 128-dim prefix measured better than of the 64-dim
  one: recall@10 0.936 against 0.916 at 16 postings and refine 3.)

The four OPQ variants share one grid of (max_postings, refine_factor), so their fronts are
measured at the same knobs. How ``M`` and the prefixes follow from the data is in
:func:`choose_dims`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import harness

#: Labels, in run order. The summary finds the variants by these.
FULL_PRECISION, SQ8, RIGID, ADAPTIVE = "full-precision", "sq8", "rigid", "adaptive"
#: Bytes a prefix code spends on its tail norm.
TAIL_BYTES = 2
OPQ_FULL_HALF, OPQ_PREFIX_HALF = "opq-full-M/2", "opq-prefix-M/2"
#: The recall@10 target the adaptive build is tuned for (issue 3's targets are at 0.95).
TUNE_RECALL = 0.95
#: d_scan is the shortest candidate prefix keeping this share of the PCA energy.
SCAN_ENERGY = 0.92
PREFIX_CANDIDATES = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Rows of the base sampled to estimate the energy of prefixes.
ENERGY_SAMPLE = 10_000


@dataclass(frozen=True)
class AnnsVariant:
    """One anns build of a run: its label, IndexConfig fields and search sweep."""

    label: str
    config: dict[str, Any]
    """IndexConfig fields; the metric is the dataset's."""
    sweep: list[dict[str, Any]] = field(default_factory=list)
    """SearchParams points (empty: :func:`bench.anns_peer.default_sweep`)."""
    tune_recall: float | None = None
    """Tune the collection for this recall@10 after the build; the sweep then also holds the
    tuned profile and a max_postings ladder at its knobs (:func:`tuned_sweep`)."""


@dataclass(frozen=True)
class StageDims:
    """What :func:`choose_dims` picked, and why (the energy its prefixes keep)."""

    dim: int
    pq_m: int
    d_scan: int
    d_route: int
    energy: dict[int, float]


def prefix_energy(base: np.ndarray, metric: str, sample: int = ENERGY_SAMPLE) -> np.ndarray:
    """Cumulative share of the energy kept by each prefix of the PCA basis, float64 [dim].

    The energy the library's basis orders by (:mod:`anns.basis`): variance about the mean for
    l2, the uncentred second moment for ip and cosine (rows normalised for cosine).
    """
    n = len(base)
    rows = np.sort(np.random.default_rng(0).choice(n, min(n, sample), replace=False))
    x = np.asarray(base[rows], dtype=np.float64)
    if metric == "cosine":
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    if metric == "l2":
        x -= x.mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(x.T @ x)[::-1], 0.0, None)
    cum: np.ndarray = np.cumsum(eig) / max(eig.sum(), 1e-30)
    return cum


def choose_dims(base: np.ndarray, metric: str) -> StageDims:
    """Stage dims and code bytes from the data.

    ``d_scan``: the shortest candidate prefix keeping :data:`SCAN_ENERGY` of the energy;
    ``d_route`` = d_scan / 2; ``M`` (pq_m): the largest divisor of d_scan not above dim / 8
    (so the OPQ rotation of the rigid and full-vector codes keeps every dim; the prefix codes'
    ``M - 2`` sub-quantizers, see :func:`adaptive_variants`, project a few away), at most
    d_scan / 2 (two dims per byte); M/2 divides d_scan too.
    Fashion-MNIST (784, l2): d_scan 128 (0.93 of the energy), d_route 64, M 64. SciFact
    MiniLM (384, cosine): d_scan 192 (0.94), d_route 96, M 48.
    """
    dim = int(base.shape[1])
    cum = prefix_energy(base, metric)
    d_scan = next((p for p in PREFIX_CANDIDATES if p < dim and cum[p - 1] >= SCAN_ENERGY), dim)
    cap = max(1, min(dim // 8, d_scan // 2))
    pq_m = max(m for m in range(1, cap + 1) if d_scan % m == 0)
    d_route = max(1, d_scan // 2)
    energy = {p: round(float(cum[p - 1]), 4) for p in sorted({d_route, d_scan, dim})}
    return StageDims(dim, pq_m, d_scan, d_route, energy)


def opq_grid(quick: bool) -> list[dict[str, Any]]:
    """The (max_postings, refine_factor) points every OPQ variant is measured at."""
    if quick:
        return harness.grid(max_postings=[8, 32], refine_factor=[2.0, 4.0])
    return harness.grid(max_postings=[8, 16, 32], refine_factor=[2.0, 3.0, 6.0]) + [
        {"max_postings": 64, "refine_factor": 3.0}]


def flat_sweep(quick: bool) -> list[dict[str, Any]]:
    """max_postings ladder for the float32 and sq8 references (their default refine)."""
    return harness.grid(max_postings=[4, 8, 16, 32] if quick else [4, 6, 8, 12, 16, 24, 32, 64])


def tuned_sweep(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The tuned profile's knobs, then a max_postings ladder around its choice (x1/4 .. x4)
    at the same other knobs. The first point is the profile itself."""
    mp = int(profile["max_postings"])
    ladder = sorted({max(1, round(mp * f)) for f in (0.25, 0.5, 0.75, 1.5, 2.0, 4.0)} - {mp})
    return [dict(profile)] + [{**profile, "max_postings": m} for m in ladder]


def adaptive_variants(base: np.ndarray, metric: str, quick: bool) -> tuple[
        list[AnnsVariant], StageDims]:
    """The variants of an ``--adaptive`` run on this base (see the module docstring)."""
    dims = choose_dims(base, metric)
    m, dim, grid = dims.pq_m, dims.dim, opq_grid(quick)
    half = max(1, m // 2)
    # codes of a prefix also carry the tail's norm (IndexConfig.tail_norms, two bytes; not for
    # cosine): two sub-quantizers fewer keep their bytes per vector equal to the full codes'
    tail = TAIL_BYTES if dims.d_scan < dim and metric != "cosine" else 0
    variants = [
        AnnsVariant(FULL_PRECISION, {"codec": "flat"}, flat_sweep(quick)),
        AnnsVariant(SQ8, {"codec": "sq8"}, flat_sweep(quick)),
        AnnsVariant(RIGID, {"codec": "opq", "pq_m": m, "d_route": dim, "d_scan": dim,
                            "d_rerank": dim}, grid),
        AnnsVariant(ADAPTIVE, {"codec": "opq", "pq_m": max(1, m - tail),
                               "d_scan": dims.d_scan, "d_route": dims.d_route}, grid,
                    tune_recall=TUNE_RECALL),
        AnnsVariant(OPQ_FULL_HALF, {"codec": "opq", "pq_m": half}, grid),
        AnnsVariant(OPQ_PREFIX_HALF, {"codec": "opq", "pq_m": max(1, half - tail),
                                      "d_scan": dims.d_scan,
                                      "d_route": dims.d_route}, grid),
    ]
    return variants, dims
