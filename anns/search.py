"""The read path, as named stages over a chunk of queries: probe -> fetch -> scan -> rerank.

Queries first pass through the collection basis; each stage then reads its own prefix of the
collection space (AdANNS): routing the first ``d_route`` dims, the scan the ``d_scan`` dims the
codes hold, the rerank ``d_rerank`` dims of the full vectors.

Posting-major: the postings all queries of a chunk chose are read once (one multi-get), put in
a scratch faiss IVF index and scored for every query that chose them in one
``search_preassigned`` call. The best candidates are then scored exactly on their full vectors
(one more multi-get). No stage loops in Python over vectors or candidates.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from anns.basis import Basis
from anns.config import Metric, SearchParams
from anns.errors import InvalidArgumentError
from anns.memory import release_freed_heap
from anns.quantization import Codec
from anns.routing import Router
from anns.storage import Storage, decode_posting
from anns.vectors import prefix


@dataclass(frozen=True)
class SearchStats:
    """What one search call did: the figures to tune ``max_postings``/``eps2`` with."""

    queries: int = 0
    postings_probed: int = 0
    """Sum over queries of postings scanned for that query."""
    postings_pruned: int = 0
    """Sum over queries of the ``max_postings`` nearest postings skipped by the eps2 rule."""
    postings_fetched: int = 0
    """Distinct postings read from storage (a posting shared by queries is read once)."""
    bytes_read: int = 0
    """Bytes of postings and full vectors fetched from storage."""
    candidates_scored: int = 0
    """Codes scored in the scan, summed over queries."""
    reranked: int = 0
    """Full vectors scored exactly, summed over queries."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per stage: route, fetch, scan, rerank."""

    def __add__(self, other: SearchStats) -> SearchStats:
        seconds = dict(self.seconds)
        for key, value in other.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
        return SearchStats(
            queries=self.queries + other.queries,
            postings_probed=self.postings_probed + other.postings_probed,
            postings_pruned=self.postings_pruned + other.postings_pruned,
            postings_fetched=self.postings_fetched + other.postings_fetched,
            bytes_read=self.bytes_read + other.bytes_read,
            candidates_scored=self.candidates_scored + other.candidates_scored,
            reranked=self.reranked + other.reranked,
            seconds=seconds,
        )


@dataclass(frozen=True)
class SearchResult:
    """Nearest neighbours of a batch of queries, best first.

    ``ids``: int64 [q, k], -1 where fewer than k results exist. ``distances``: float32 [q, k];
    squared Euclidean distance for l2 (ascending, +inf padding), inner product / cosine
    similarity for ip and cosine (descending, -inf padding). ``stats`` is None unless asked for.
    """

    ids: np.ndarray
    distances: np.ndarray
    stats: SearchStats | None = None


@dataclass(frozen=True)
class ReadView:
    """What the read path needs of a collection, captured once per call (writers swap it)."""

    storage: Storage
    router: Router
    codec: Codec
    metric: Metric
    dim: int
    posting_bytes: float
    """Mean bytes of one stored posting (sizes the chunks of a batch)."""
    replica_cap: int
    """Most postings one vector is stored in."""
    basis: Basis
    """Raw queries -> collection space."""
    d_scan: int
    """Dims the codes hold (the codec's dim)."""
    d_rerank: int
    """Default dims of the exact rerank."""

    @property
    def d_route(self) -> int:
        """Dims the centroids are stored at."""
        return self.router.dim

    def stage_dims(self, params: SearchParams) -> tuple[int, int]:
        """(d_route, d_rerank) of one search: its overrides, checked against what is stored."""
        d_route = params.d_route or self.d_route
        if d_route > self.d_route:
            raise InvalidArgumentError(
                f"d_route {d_route} is larger than the collection's d_route {self.d_route} "
                f"(its centroids are stored at {self.d_route} dims)"
            )
        d_rerank = params.d_rerank or self.d_rerank
        if d_rerank > self.dim:
            raise InvalidArgumentError(
                f"d_rerank {d_rerank} is larger than the collection's dim {self.dim}"
            )
        return d_route, d_rerank


def search(
    view: ReadView, queries: np.ndarray, k: int, params: SearchParams
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    """Search validated raw queries (float32 [q, dim]); returns (ids, distances, stats)."""
    d_route, d_rerank = view.stage_dims(params)
    q = len(queries)
    ids = np.full((q, k), -1, dtype=np.int64)
    worst = np.inf if view.metric == "l2" else -np.inf
    distances = np.full((q, k), worst, dtype=np.float32)

    t0 = time.perf_counter()
    queries = view.basis.apply(queries)
    pids, _ = view.router.probe(prefix(queries, d_route), params.max_postings, params.eps2)
    route_seconds = time.perf_counter() - t0
    stats = SearchStats(
        queries=q,
        postings_probed=int((pids >= 0).sum()),
        postings_pruned=int(min(params.max_postings, view.router.size) * q - (pids >= 0).sum()),
        seconds={"route": route_seconds},
    )
    budget = max(1, int(params.fetch_budget_mb * (1 << 20) / view.posting_bytes))
    for rows in _chunks_by_postings(pids, budget, view.router.size):
        chunk_ids, chunk_dist, chunk_stats = _search_chunk(
            view, queries[rows], pids[rows], k, params, d_rerank
        )
        ids[rows] = chunk_ids
        distances[rows] = chunk_dist
        stats = stats + chunk_stats
    _heap_churn.add(stats.bytes_read)
    return ids, distances, stats


class _HeapChurn:
    """Counts bytes fetched by searches and returns freed heap to the OS every ``every`` of
    them: glibc otherwise keeps the freed read buffers of past searches (fragmented, so its
    own trimming rarely applies) and RSS would drift up to the largest working set served.
    Amortised, one trim (~0.1 ms) costs nothing per query."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._since = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self._since += nbytes
            due = self._since >= self.every
            if due:
                self._since = 0
        if due:
            release_freed_heap()


_heap_churn = _HeapChurn(8 << 20)


def _chunks_by_postings(pids: np.ndarray, budget: int, n_postings: int) -> list[np.ndarray]:
    """Split queries into chunks whose distinct postings number at most ``budget`` (a query
    alone may exceed it). Queries are ordered by their nearest posting first, so neighbours in
    the order share postings and each chunk reads fewer."""
    order = np.lexsort((pids[:, 1] if pids.shape[1] > 1 else pids[:, 0], pids[:, 0]))
    if pids.size <= budget:  # everything fits: one chunk, no bookkeeping
        return [order]
    seen = np.zeros(n_postings, dtype=bool)
    chunks, start, used = [], 0, 0
    for i, row in enumerate(pids[order]):  # per query (not per vector): cheap bookkeeping
        row = row[row >= 0]
        new = int((~seen[row]).sum())
        if used + new > budget and i > start:
            chunks.append(order[start:i])
            seen[:] = False
            start, used = i, 0
            new = len(row)
        seen[row] = True
        used += new
    chunks.append(order[start:])
    return chunks


def _search_chunk(
    view: ReadView, queries: np.ndarray, pids: np.ndarray, k: int, params: SearchParams,
    d_rerank: int,
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    seconds: dict[str, float] = {}
    t1 = time.perf_counter()
    probed = pids >= 0
    unique, local = np.unique(pids[probed], return_inverse=True)
    assign = np.full(pids.shape, -1, dtype=np.int64)
    assign[probed] = local

    # fetch: one multi-get for the chunk's postings
    blobs = view.storage.get_postings(unique)
    code_size = view.codec.code_size
    lists = [decode_posting(b, code_size) if b else _EMPTY_LIST for b in blobs]
    sizes = np.array([len(ids) for ids, _ in lists], dtype=np.int64)
    posting_bytes = sum(len(b) for b in blobs if b)
    t2 = time.perf_counter()
    seconds["fetch"] = t2 - t1

    # scan: codes of every probed posting, for every query that chose it. A vector comes
    # back once per probed posting holding it (at most replica_cap of them), so asking for
    # depth * min(replica_cap, probes) guarantees `depth` distinct candidates where they exist
    depth = params.rerank_depth(k)
    copies = max(1, min(view.replica_cap, pids.shape[1]))
    # no query can get more candidates than the chunk fetched: do not size heaps beyond that
    scan_k = max(1, min(depth * copies, int(sizes.sum())))
    _, cand = view.codec.scan(prefix(queries, view.d_scan), lists, assign, scan_k)
    del lists, blobs
    cand = _first_unique(cand, depth)
    t3 = time.perf_counter()
    seconds["scan"] = t3 - t2

    # rerank: exact distances on full vectors
    out_ids, out_dist, vector_bytes, reranked = _rerank(view, queries, cand, k, d_rerank)
    seconds["rerank"] = time.perf_counter() - t3

    stats = SearchStats(
        postings_fetched=len(unique),
        bytes_read=posting_bytes + vector_bytes,
        candidates_scored=int(sizes[local].sum()),
        reranked=reranked,
        seconds=seconds,
    )
    return out_ids, out_dist, stats


_EMPTY_LIST = (np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.uint8))


def _first_unique(cand: np.ndarray, depth: int) -> np.ndarray:
    """Per row, the first ``depth`` distinct non-negative ids in order; -1 padding."""
    order = np.argsort(cand, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(cand, order, axis=1)
    dup_sorted = np.zeros(cand.shape, dtype=bool)
    dup_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    keep = ~dup & (cand >= 0)
    keep &= np.cumsum(keep, axis=1) <= depth
    # move kept entries to the front, preserving their order
    front = np.argsort(~keep, axis=1, kind="stable")[:, :depth]
    out = np.take_along_axis(np.where(keep, cand, -1), front, axis=1)
    if out.shape[1] < depth:
        out = np.pad(out, ((0, 0), (0, depth - out.shape[1])), constant_values=-1)
    return out


def _rerank(
    view: ReadView, queries: np.ndarray, cand: np.ndarray, k: int, d_rerank: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Top-k among candidates [q, r] (-1 = none) by distance on the first ``d_rerank`` dims
    of their full vectors (exact when that is all); (ids, distances, bytes, reranked)."""
    valid = cand >= 0
    if not valid.any():
        worst = np.inf if view.metric == "l2" else -np.inf
        return (np.full((len(cand), k), -1, np.int64), np.full((len(cand), k), worst, np.float32),
                0, 0)
    unique, inverse = np.unique(cand[valid], return_inverse=True)
    blobs = view.storage.get_vectors(unique)
    if blobs.count(None) == 0:  # the common case: one C-level join, no per-candidate loop
        present = np.ones(len(unique), dtype=bool)
        vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, view.dim)  # type: ignore[arg-type]
    else:  # some candidates were deleted since their posting was scanned
        present = np.array([b is not None for b in blobs], dtype=bool)
        vectors = np.zeros((len(unique), view.dim), dtype=np.float32)
        if present.any():
            joined = b"".join(b for b in blobs if b is not None)
            vectors[present] = np.frombuffer(joined, dtype="<f4").reshape(-1, view.dim)
    nbytes = int(present.sum()) * 4 * view.dim

    slot = np.zeros(cand.shape, dtype=np.int64)
    slot[valid] = inverse
    # a candidate deleted since it was scanned has no full vector: it cannot be returned
    alive = valid & present[slot]
    if d_rerank < view.dim:
        queries, vectors = queries[:, :d_rerank], vectors[:, :d_rerank]
    scores = _exact_scores(view.metric, queries, vectors, slot)
    if view.metric == "l2":
        scores = np.where(alive, scores, np.inf)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = np.where(alive, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_ids = np.take_along_axis(np.where(alive, cand, -1), order, axis=1)
    top_dist = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    if top_ids.shape[1] < k:
        pad = k - top_ids.shape[1]
        worst = np.inf if view.metric == "l2" else -np.inf
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        top_dist = np.pad(top_dist, ((0, 0), (0, pad)), constant_values=worst)
    return top_ids, top_dist, nbytes, int(alive.sum())


def _exact_scores(
    metric: Metric, queries: np.ndarray, vectors: np.ndarray, slot: np.ndarray
) -> np.ndarray:
    """Exact distance (l2) or similarity (ip, cosine) of query i to vectors[slot[i, j]].

    Gathers [rows, r, d] blocks of bounded size (~8 MiB) rather than the whole chunk at once.
    """
    q, r = slot.shape
    out = np.empty((q, r), dtype=np.float32)
    step = max(1, (8 << 20) // max(1, r * vectors.shape[1] * 4))
    for s in range(0, q, step):
        block = vectors[slot[s : s + step]]  # [rows, r, d]
        qs = queries[s : s + step]
        if metric == "l2":
            # the difference form, not |q|^2 + |v|^2 - 2qv: no cancellation for near points
            block -= qs[:, None, :]
            out[s : s + step] = np.einsum("qrd,qrd->qr", block, block)
        else:
            out[s : s + step] = np.matmul(block, qs[:, :, None])[:, :, 0]
    return out
