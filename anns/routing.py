"""Routing: balanced hierarchical clustering, closure replication with the RNG rule, and the
RAM index over centroids that every query and insert goes through.

All distances in the replication and pruning rules are true Euclidean distances (square roots
of faiss's squared L2), as in SPANN: ``(1 + eps) * dist`` means the same thing at any scale.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from anns.config import CentroidIndexKind

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- clustering
def balanced_clusters(
    x: np.ndarray, leaf_size: int, *, branching: int = 32, iters: int = 12, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical balanced k-means: leaves holding at most ``leaf_size`` rows each.

    Splits ``x`` (float32 [n, d]) recursively with k-means into at most ``branching`` parts,
    each part asking for as many leaves as its size needs (ceil(size / leaf_size)), until every
    part fits. Unbalanced k-means splits are repaired by the recursion itself: an oversized
    child is split again, so no leaf exceeds ``leaf_size``. Returns (centroids float32
    [leaves, d], leaf label int64 [n] of every row); leaves number about n / leaf_size.
    """
    rng = np.random.default_rng(seed)
    labels = np.empty(len(x), dtype=np.int64)
    leaves: list[np.ndarray] = []
    stack = [np.arange(len(x))]
    while stack:
        rows = stack.pop()
        want = math.ceil(len(rows) / leaf_size)
        if want <= 1:
            labels[rows] = len(leaves)
            leaves.append(x[rows].mean(axis=0, keepdims=True, dtype=np.float64))
            continue
        parts = min(branching, want)
        groups = _split_by_label(rows, _kmeans_labels(x[rows], parts, iters, rng), parts)
        if len(groups) == 1:  # k-means could not separate them (duplicates): split by order
            groups = np.array_split(rows, parts)
        stack.extend(groups)
    return np.ascontiguousarray(np.concatenate(leaves), dtype=np.float32), labels


def _kmeans_labels(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, seed=int(rng.integers(1 << 30)), min_points_per_centroid=1,
        max_points_per_centroid=256, spherical=False,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    _, labels = km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels.ravel()


def _split_by_label(rows: np.ndarray, labels: np.ndarray, parts: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(1, parts))
    return [g for g in np.split(rows[order], bounds) if len(g)]


def _rng_filter(cand: np.ndarray, dist: np.ndarray, closure: np.ndarray) -> np.ndarray:
    """RNG rule over candidates in distance order: [rows, cap, d] centroids -> chosen mask."""
    sq_norms = np.einsum("ncd,ncd->nc", cand, cand)
    gram = np.matmul(cand, cand.transpose(0, 2, 1))
    cc = np.sqrt(np.maximum(sq_norms[:, :, None] + sq_norms[:, None, :] - 2 * gram, 0))
    chosen = np.zeros(closure.shape, dtype=bool)
    chosen[:, 0] = True
    for j in range(1, closure.shape[1]):  # a loop over replica slots, not over vectors
        blocked = (chosen[:, :j] & (cc[:, :j, j] < dist[:, j : j + 1])).any(axis=1)
        chosen[:, j] = closure[:, j] & ~blocked
    return chosen


# --------------------------------------------------------------------------------- router
class Router:
    """Centroids in RAM and the faiss index over them.

    ``flat`` (exact) or ``hnsw`` (faiss IndexHNSWFlat), chosen by centroid count. Centroid ids
    are dense 0..K-1 and are the posting ids.
    """

    def __init__(self, centroids: np.ndarray, kind: CentroidIndexKind, hnsw_threshold: int):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.kind = kind
        self.hnsw_threshold = hnsw_threshold
        self.index = self._make_index(self.centroids)

    @property
    def size(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def resolved_kind(self) -> str:
        if self.kind == "auto":
            return "hnsw" if len(self.centroids) >= self.hnsw_threshold else "flat"
        return self.kind

    def _make_index(self, centroids: np.ndarray) -> faiss.Index:
        d = centroids.shape[1]
        if self.resolved_kind() == "hnsw":
            index = faiss.IndexHNSWFlat(d, 32)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = 128
        else:
            index = faiss.IndexFlatL2(d)
        index.add(centroids)
        return index

    def with_centroids(self, replaced: dict[int, np.ndarray], added: np.ndarray) -> Router:
        """A new router: some centroids moved, some appended (ids continue from K)."""
        centroids = self.centroids.copy()
        for pid, c in replaced.items():
            centroids[pid] = c
        if len(added):
            centroids = np.concatenate([centroids, added.astype(np.float32)])
        return Router(centroids, self.kind, self.hnsw_threshold)

    def nearest(self, x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` nearest centroids of each row: (Euclidean distances [n, m], ids [n, m]).

        ids are -1 (distance inf) where fewer than m centroids exist.
        """
        m_eff = min(m, self.size)
        sq, ids = self.index.search(x, m_eff)
        dist = np.sqrt(np.maximum(sq, 0, out=sq))
        if m_eff < m:
            pad = m - m_eff
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return dist, ids

    def probe(
        self, queries: np.ndarray, max_postings: int, eps2: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Postings to read per query, with query-aware dynamic pruning.

        Returns (ids int64 [q, m], distances float32 [q, m]) for the ``max_postings`` nearest
        centroids (m <= max_postings: columns no query keeps are dropped), ids set to -1 where
        dist(q, c_j) > (1 + eps2) * dist(q, c_1) (pruned).
        """
        dist, ids = self.nearest(queries, min(max_postings, self.size))
        keep = (dist <= (1.0 + eps2) * dist[:, :1]) & (ids >= 0)
        # pruned entries sit at the end of each row: drop columns no query kept
        width = max(1, int(keep.sum(axis=1).max()))
        ids = np.where(keep, ids, -1)[:, :width]
        return ids, dist[:, :width]

    def replicas(
        self, x: np.ndarray, replica_cap: int, eps1: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Postings each vector is stored in: closure replication filtered by the RNG rule.

        Candidate j (in order of distance) joins when dist(x, c_j) <= (1 + eps1) * dist(x, c_1)
        and no already chosen c_i is closer to c_j than x is (dist(c_i, c_j) < dist(x, c_j)),
        up to ``replica_cap`` postings. Column 0 is always the nearest centroid. Returns
        (ids int64 [n, replica_cap] with -1 padding, Euclidean distances float32 with inf).
        """
        dist, ids = self.nearest(x, replica_cap)
        n, cap = ids.shape
        chosen = np.zeros((n, cap), dtype=bool)
        chosen[:, 0] = ids[:, 0] >= 0
        closure = (dist <= (1.0 + eps1) * dist[:, :1]) & (ids >= 0)
        # Rows with a candidate inside the closure need the RNG test; bound the [rows, cap, d]
        # gather of their candidate centroids to ~32 MB at a time.
        todo = np.flatnonzero(closure[:, 1:].any(axis=1)) if cap > 1 else np.empty(0, np.int64)
        step = max(1, (8 << 20) // (cap * self.dim))
        for s in range(0, len(todo), step):
            rows = todo[s : s + step]
            chosen[rows] = _rng_filter(self.centroids[ids[rows]], dist[rows], closure[rows])
        ids = np.where(chosen, ids, -1)
        dist = np.where(chosen, dist, np.inf).astype(np.float32)
        return ids, dist

    # -------------------------------------------------------------------- persistence
    def to_bytes(self) -> bytes:
        """The centroids as .npy bytes (the faiss index is rebuilt from them on load)."""
        import io

        buf = io.BytesIO()
        np.save(buf, self.centroids, allow_pickle=False)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, kind: CentroidIndexKind, hnsw_threshold: int) -> Router:
        import io

        return cls(np.load(io.BytesIO(blob), allow_pickle=False), kind, hnsw_threshold)
