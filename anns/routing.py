"""Routing: balanced hierarchical clustering, closure replication with the RNG rule, and the
RAM index over centroids that every query and insert goes through.

All distances in the replication and pruning rules are true Euclidean distances (square roots
of faiss's squared L2), as in SPANN: ``(1 + eps) * dist`` means the same thing at any scale.
Inner-product collections are clustered the same way, but a query picks its postings by inner
product with the centroids (the largest first), not by distance: the vectors of the largest
inner product have large norms and sit far from the query. Their pruning rule reads the
distance of the usual reduction of inner product to L2 (centroids ``[c, sqrt(M^2 - |c|^2)]``
for ``M`` the largest centroid norm, queries ``[q, 0]``), which orders centroids the same way.
"""

from __future__ import annotations

import logging
import math
import threading

import faiss
import numpy as np

from anns.config import CentroidIndexKind, Metric

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- clustering
#: Rows a 2-means split is fitted on; the cut itself is applied to every row of the node.
_SPLIT_SAMPLE = 2048


def balanced_clusters(
    x: np.ndarray, leaf_size: int, *, iters: int = 12, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical balanced clustering: leaves of near-equal size, none above ``leaf_size``.

    A node of n rows needs L = ceil(n / leaf_size) leaves. It is bisected along the direction
    joining its two 2-means centroids, cut at the rank that gives each side its share of the
    L leaves (floor(L/2) and ceil(L/2)), and both sides are split the same way until L = 1.
    Every leaf therefore holds n / L rows to within one, which is SPANN's balance constraint
    met exactly rather than through a penalty; the 2-means direction keeps cuts between
    natural groups of the data. Cost: ~log2(n / leaf_size) passes over the data.

    Returns (centroids float32 [leaves, d] = leaf means, leaf label int64 [n] of every row).
    """
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int64)
    leaves: list[np.ndarray] = []
    stack = [np.arange(len(x))]
    while stack:
        rows = stack.pop()
        want = math.ceil(len(rows) / leaf_size)
        if want <= 1:
            labels[rows] = len(leaves)
            leaves.append(x[rows].mean(axis=0, dtype=np.float64))
            continue
        n_left = round(len(rows) * (want // 2) / want)
        fit = rows if len(rows) <= _SPLIT_SAMPLE else rng.choice(rows, _SPLIT_SAMPLE, replace=False)
        direction = _split_direction(x[fit], iters, rng)
        # project in bounded blocks: never a copy of a whole large node
        step = max(1, (16 << 20) // (4 * x.shape[1]))
        proj = np.concatenate([_matvec(x[rows[s : s + step]], direction)
                               for s in range(0, len(rows), step)])
        order = np.argpartition(proj, n_left)
        stack.append(rows[order[n_left:]])
        stack.append(rows[order[:n_left]])
    return np.ascontiguousarray(np.stack(leaves), dtype=np.float32), labels


def _matvec(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``a @ v`` for finite float32 operands, without OpenBLAS's spurious warnings.

    OpenBLAS's float32 matrix-vector kernels can raise the invalid-operation flag on finite
    input (lanes past the data's end), which numpy reports as a RuntimeWarning only now and
    then (the suite saw it 1 run in 4, never on replay). The flag is ignored, and a result
    that is not finite, which finite operands cannot give, is computed again without BLAS."""
    with np.errstate(invalid="ignore"):
        out = a @ v
    if not np.isfinite(out).all():
        out = np.einsum("ij,j->i", a, v)
    return out


def _split_direction(sample: np.ndarray, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vector from one 2-means centroid to the other, fitted on the rows ``sample``."""
    sq = np.einsum("ij,ij->i", sample, sample)
    # seeds: a random row, the row farthest from it, and the row farthest from that one
    a = sample[np.argmax(sq - 2 * _matvec(sample, sample[rng.integers(len(sample))]))]
    b = sample[np.argmax(sq - 2 * _matvec(sample, a))]
    centres = np.stack([a, b])
    previous = None
    for _ in range(iters):
        # nearer centre by the side of the bisecting hyperplane of the two centres
        w = centres[1] - centres[0]
        side = _matvec(sample, w) > 0.5 * float(centres[1] @ centres[1] - centres[0] @ centres[0])
        count = int(side.sum())
        if count in (0, len(sample)) or (previous is not None and (side == previous).all()):
            break  # degenerate, or converged
        previous = side
        ones = side.astype(np.float32)
        right = _matvec(sample.T, ones) / count
        left = (sample.sum(axis=0) - right * count) / (len(sample) - count)
        centres = np.stack([left, right]).astype(np.float32)
    direction = centres[1] - centres[0]
    norm = float(np.linalg.norm(direction))
    if norm == 0:  # all rows equal: any cut is as good as another
        return np.eye(1, sample.shape[1], dtype=np.float32)[0]
    return (direction / norm).astype(np.float32)


def _rng_filter(
    centroids: np.ndarray, ids: np.ndarray, dist: np.ndarray, closure: np.ndarray
) -> np.ndarray:
    """RNG rule over candidates ``ids`` [rows, cap] in distance order -> chosen mask.

    Only candidates inside the closure are ever chosen, so only pairs of them can block one
    another: their distances are computed by faiss straight from the centroid table, one
    pair at a time, instead of gathering a [rows, cap, d] copy of every candidate centroid
    and multiplying [cap, d] x [d, cap] per row (which cost several times faiss's search)."""
    cap = ids.shape[1]
    first, second = np.triu_indices(cap, 1)
    rows, pair = np.nonzero(closure[:, first] & closure[:, second])
    a, b = first[pair], second[pair]
    ix = np.ascontiguousarray(ids[rows, a])
    iy = np.ascontiguousarray(ids[rows, b])
    sq = np.empty(len(rows), dtype=np.float32)
    if len(rows):
        faiss.pairwise_indexed_L2sqr(  # type: ignore[attr-defined]
            centroids.shape[1], len(rows), faiss.swig_ptr(centroids), faiss.swig_ptr(ix),
            faiss.swig_ptr(centroids), faiss.swig_ptr(iy), faiss.swig_ptr(sq))
    cc = np.full((len(ids), cap, cap), np.inf, dtype=np.float32)  # inf: never blocks
    cc[rows, a, b] = np.sqrt(sq)
    chosen = np.zeros(closure.shape, dtype=bool)
    chosen[:, 0] = True
    for j in range(1, cap):  # a loop over replica slots, not over vectors
        blocked = (chosen[:, :j] & (cc[:, :j, j] < dist[:, j : j + 1])).any(axis=1)
        chosen[:, j] = closure[:, j] & ~blocked
    return chosen


# --------------------------------------------------------------------------------- router
#: Routing on a prefix of the centroids' dims keeps an index per prefix; this many at most.
PREFIX_INDEXES = 4


class _IndexMemory:
    """Exposes the vectors of a flat faiss index to numpy, keeping the index alive: an array
    made from it has this object as its base, so the memory outlives every Router holding it."""

    def __init__(self, index: faiss.Index, n: int, d: int) -> None:
        flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSW) else index
        self._index = index
        self.__array_interface__ = {
            "shape": (n, d),
            "typestr": "<f4",
            "data": (int(flat.get_xb()), True),  # read-only
            "version": 3,
        }


def _stored_vectors(index: faiss.Index, n: int, d: int) -> np.ndarray:
    """A read-only numpy view of the vectors a flat (or HNSW-flat) faiss index stores."""
    if n == 0:
        return np.empty((0, d), dtype=np.float32)
    return np.asarray(_IndexMemory(index, n, d))


class Router:
    """Centroids in RAM and the faiss index over them.

    ``flat`` (exact) or ``hnsw`` (faiss IndexHNSWFlat), chosen by centroid count. Centroid ids
    are dense 0..K-1 and are the posting ids.
    """

    def __init__(self, centroids: np.ndarray, kind: CentroidIndexKind, hnsw_threshold: int):
        self.kind = kind
        self.hnsw_threshold = hnsw_threshold
        self.index = self._make_index(np.ascontiguousarray(centroids, dtype=np.float32))
        # the centroids live once, in the faiss index; this is a read-only view of them
        # (a Router never changes after construction, so the view stays valid)
        self.centroids = _stored_vectors(self.index, len(centroids), centroids.shape[1])
        self._prefix_indexes: dict[tuple[bool, int], faiss.Index] = {}
        self._max_norms: dict[int, float] = {}
        self._prefix_lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes the router holds: the centroids (once, in the faiss index), an HNSW graph's
        links, and the flat indexes over prefixes built for searches routing on fewer dims."""
        total = int(self.centroids.nbytes)
        if isinstance(self.index, faiss.IndexHNSW):
            hnsw = self.index.hnsw
            total += 4 * int(hnsw.neighbors.size()) + 8 * int(hnsw.offsets.size()) + 4 * int(
                hnsw.levels.size())
        with self._prefix_lock:
            total += sum(4 * int(ix.ntotal) * int(ix.d) for ix in self._prefix_indexes.values())
        return total

    def resolved_kind(self, count: int | None = None) -> str:
        if self.kind == "auto":
            n = self.size if count is None else count
            return "hnsw" if n >= self.hnsw_threshold else "flat"
        return self.kind

    def _make_index(self, centroids: np.ndarray) -> faiss.Index:
        d = centroids.shape[1]
        if self.resolved_kind(len(centroids)) == "hnsw":
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

    def _index_for(self, dims: int, inner_product: bool = False) -> faiss.Index:
        """The index over the centroids' first ``dims`` dims: the stored one for all of them
        (by distance); else, for a prefix (a search routing on fewer dims) or by inner
        product, an exact flat index, built once and kept (it costs ``size * dims * 4`` bytes;
        at most PREFIX_INDEXES are kept)."""
        if dims == self.dim and not inner_product:
            return self.index
        with self._prefix_lock:
            index = self._prefix_indexes.get((inner_product, dims))
            if index is None:
                if len(self._prefix_indexes) >= PREFIX_INDEXES:
                    self._prefix_indexes.pop(next(iter(self._prefix_indexes)))
                index = faiss.IndexFlatIP(dims) if inner_product else faiss.IndexFlatL2(dims)
                index.add(np.ascontiguousarray(self.centroids[:, :dims]))
                self._prefix_indexes[(inner_product, dims)] = index
            return index

    def _max_norm(self, dims: int) -> float:
        """The largest norm of the centroids' first ``dims`` dims."""
        with self._prefix_lock:
            if dims not in self._max_norms:
                norms = np.linalg.norm(self.centroids[:, :dims], axis=1)
                self._max_norms[dims] = float(norms.max()) if len(norms) else 0.0
            return self._max_norms[dims]

    def nearest(
        self, x: np.ndarray, m: int, metric: Metric = "l2"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` nearest centroids of each row: (Euclidean distances [n, m], ids [n, m]).
        ``x`` may have fewer dims than the centroids: it is then matched against their prefix.
        For ``metric="ip"`` the centroids of the largest inner product, with the distances
        of the inner product's reduction to L2 (see the module's docstring).

        ids are -1 (distance inf) where fewer than m centroids exist.
        """
        m_eff = min(m, self.size)
        dims = x.shape[1]
        if metric == "ip":
            scores, ids = self._index_for(dims, inner_product=True).search(x, m_eff)
            # |[q, 0] - [c, sqrt(M^2 - |c|^2)]|^2 = |q|^2 + M^2 - 2 q.c
            sq = np.einsum("nd,nd->n", x, x)[:, None] + self._max_norm(dims) ** 2 - 2 * scores
            sq = np.where(ids >= 0, sq, np.inf).astype(np.float32)
        else:
            sq, ids = self._index_for(dims).search(x, m_eff)
        dist = np.sqrt(np.maximum(sq, 0, out=sq))
        if m_eff < m:
            pad = m - m_eff
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return dist, ids

    def probe(
        self, queries: np.ndarray, max_postings: int, eps2: float, metric: Metric = "l2"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Postings to read per query, with query-aware dynamic pruning.

        Returns (ids int64 [q, m], distances float32 [q, m]) for the ``max_postings`` nearest
        centroids (m <= max_postings: columns no query keeps are dropped), ids set to -1 where
        dist(q, c_j) > (1 + eps2) * dist(q, c_1) (pruned); when dist(q, c_1) is 0 the nearest
        positive distance stands in for it. ``metric="ip"``: nearest as :meth:`nearest` reads
        it, by inner product.
        """
        dist, ids = self.nearest(queries, min(max_postings, self.size), metric)
        # the ratio rule is relative to the nearest centroid; a query sitting exactly on one
        # (distance 0) measures against the nearest centroid at a positive distance instead
        positive = np.where(dist > 0, dist, np.inf).min(axis=1, keepdims=True)
        reference = np.where(dist[:, :1] > 0, dist[:, :1], positive)
        keep = (dist <= (1.0 + eps2) * reference) & (ids >= 0)
        # pruned entries sit at the end of each row: drop columns no query kept
        width = max(1, int(keep.sum(axis=1).max(initial=0)))
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
        # Rows with a candidate inside the closure need the RNG test; bound its [rows, cap,
        # cap] distances between candidates to ~32 MB at a time.
        todo = np.flatnonzero(closure[:, 1:].any(axis=1)) if cap > 1 else np.empty(0, np.int64)
        step = max(1, (8 << 20) // (cap * cap))
        for s in range(0, len(todo), step):
            rows = todo[s : s + step]
            chosen[rows] = _rng_filter(self.centroids, ids[rows], dist[rows], closure[rows])
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
