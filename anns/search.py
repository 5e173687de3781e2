"""The read path, as named stages over a chunk of queries: probe -> fetch -> scan -> rerank.

Posting-major: the postings all queries of a chunk chose are read once (one multi-get), put in
a scratch faiss IVF index and scored for every query that chose them in one
``search_preassigned`` call. The best candidates are then scored exactly on their full vectors
(one more multi-get). No stage loops in Python over vectors or candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from anns.config import Metric, SearchParams
from anns.quantization import Codec
from anns.routing import Router
from anns.storage import Storage, decode_posting


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


def search(
    view: ReadView, queries: np.ndarray, k: int, params: SearchParams
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    """Search validated queries (float32 [q, dim]); returns (ids, distances, stats)."""
    q = len(queries)
    ids = np.full((q, k), -1, dtype=np.int64)
    worst = np.inf if view.metric == "l2" else -np.inf
    distances = np.full((q, k), worst, dtype=np.float32)
    stats = SearchStats(queries=0)
    for s in range(0, q, params.query_chunk):
        chunk = queries[s : s + params.query_chunk]
        chunk_ids, chunk_dist, chunk_stats = _search_chunk(view, chunk, k, params)
        ids[s : s + len(chunk)] = chunk_ids
        distances[s : s + len(chunk)] = chunk_dist
        stats = stats + chunk_stats
    return ids, distances, stats


def _search_chunk(
    view: ReadView, queries: np.ndarray, k: int, params: SearchParams
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    # probe: postings per query, pruned by eps2
    pids, _ = view.router.probe(queries, params.max_postings, params.eps2)
    probed = pids >= 0
    unique, local = np.unique(pids[probed], return_inverse=True)
    assign = np.full(pids.shape, -1, dtype=np.int64)
    assign[probed] = local
    t1 = time.perf_counter()
    seconds["route"] = t1 - t0

    # fetch: one multi-get for the chunk's postings
    blobs = view.storage.get_postings(unique)
    code_size = view.codec.code_size
    lists = [decode_posting(b, code_size) if b else _EMPTY_LIST for b in blobs]
    sizes = np.array([len(ids) for ids, _ in lists], dtype=np.int64)
    posting_bytes = sum(len(b) for b in blobs if b)
    t2 = time.perf_counter()
    seconds["fetch"] = t2 - t1

    # scan: codes of every probed posting, for every query that chose it; ask for extra
    # candidates because a replicated vector can come back once per posting holding it
    depth = params.rerank_depth(k)
    _, cand = view.codec.scan(queries, lists, assign, 2 * depth)
    cand = _first_unique(cand, depth)
    t3 = time.perf_counter()
    seconds["scan"] = t3 - t2

    # rerank: exact distances on full vectors
    out_ids, out_dist, vector_bytes, reranked = _rerank(view, queries, cand, k)
    seconds["rerank"] = time.perf_counter() - t3

    stats = SearchStats(
        queries=len(queries),
        postings_probed=int(probed.sum()),
        postings_pruned=int(
            min(params.max_postings, view.router.size) * len(queries) - probed.sum()
        ),
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
    view: ReadView, queries: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Exact top-k among candidates [q, r] (-1 = none); (ids, distances, bytes, reranked)."""
    valid = cand >= 0
    if not valid.any():
        worst = np.inf if view.metric == "l2" else -np.inf
        return (np.full((len(cand), k), -1, np.int64), np.full((len(cand), k), worst, np.float32),
                0, 0)
    unique, inverse = np.unique(cand[valid], return_inverse=True)
    blobs = view.storage.get_vectors(unique)
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
    gathered = vectors[slot]  # [q, r, d]
    if view.metric == "l2":
        # the difference form, not |q|^2 + |v|^2 - 2qv: no cancellation error for near points
        gathered -= queries[:, None, :]
        scores = np.einsum("qrd,qrd->qr", gathered, gathered)
        scores = np.where(alive, scores, np.inf)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        dots = np.matmul(gathered, queries[:, :, None])[:, :, 0]
        scores = np.where(alive, dots, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_ids = np.take_along_axis(np.where(alive, cand, -1), order, axis=1)
    top_dist = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    if top_ids.shape[1] < k:
        pad = k - top_ids.shape[1]
        worst = np.inf if view.metric == "l2" else -np.inf
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        top_dist = np.pad(top_dist, ((0, 0), (0, pad)), constant_values=worst)
    return top_ids, top_dist, nbytes, int(alive.sum())
