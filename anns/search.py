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
from dataclasses import dataclass, field, fields, replace

import numpy as np

from anns.basis import Basis
from anns.config import Metric, SearchParams
from anns.errors import InvalidArgumentError
from anns.memory import release_freed_heap
from anns.models import ModelVersion, Models
from anns.quantization import Codec
from anns.routing import Router
from anns.storage import Storage, decode_posting, decode_vectors
from anns.threads import serial_faiss
from anns.vectors import prefix

#: Searches of at most this many queries run faiss on the calling thread alone: waking its
#: OpenMP workers for a few queries costs more than they bring (see anns.threads). On two
#: shared cores (load 3), Fashion-MNIST, cached reads: 8 queries per call took 0.65 against
#: 1.75 ms a query with two threads, 16 took 0.56 against 1.40.
SERIAL_QUERIES = 16


def _no_queries() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class QueryStats:
    """Figures of each query of a search call: int64 arrays [q], in query order.

    A batch reads a posting (or a full vector) shared by several of its queries once, but
    ``bytes_read`` counts it for every query that read it: the per-query bytes say what each
    query would cost on its own and sum to at least :attr:`SearchStats.bytes_read`. The other
    figures sum to their totals.
    """

    postings_probed: np.ndarray = field(default_factory=_no_queries)
    """Postings scanned for the query (at most ``max_postings``)."""
    candidates_scored: np.ndarray = field(default_factory=_no_queries)
    """Codes scored in the scan: the summed sizes of the postings the query probed."""
    bytes_read: np.ndarray = field(default_factory=_no_queries)
    """Stored bytes of the postings the query probed plus those of the full vectors it
    reranked (shared reads counted for each query, see above)."""
    reranked: np.ndarray = field(default_factory=_no_queries)
    """Full vectors scored exactly for the query."""

    def __len__(self) -> int:
        return len(self.postings_probed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QueryStats):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(_arrays(self), _arrays(other)))

    __hash__ = None  # type: ignore[assignment]  # holds mutable arrays


def _arrays(per_query: QueryStats) -> list[np.ndarray]:
    return [getattr(per_query, f.name) for f in fields(QueryStats)]


@dataclass(frozen=True)
class SearchStats:
    """What one search call did: the figures to tune ``max_postings``/``eps2`` with.

    The integer figures are totals over the call's queries; ``per_query`` has them query by
    query, in the order of the queries.
    """

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
    per_query: QueryStats = field(default_factory=QueryStats)
    """The figures of each query (``queries`` of them): see :class:`QueryStats`."""

    def __add__(self, other: SearchStats) -> SearchStats:
        """The figures of both calls' queries, those of ``self`` first (per_query too)."""
        return _merged([self, other])

    @staticmethod
    def joined(parts: list[SearchStats]) -> SearchStats:
        """The figures of every part's queries, in order (one concatenation, not one per
        part as adding them up would)."""
        return _merged(parts)


def _merged(parts: list[SearchStats]) -> SearchStats:
    """The figures of all parts' queries, in order: totals summed, per-query figures
    concatenated once (adding parts one by one would copy the arrays once per part)."""
    seconds: dict[str, float] = {}
    for part in parts:
        for key, value in part.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    return SearchStats(
        queries=sum(p.queries for p in parts),
        postings_probed=sum(p.postings_probed for p in parts),
        postings_pruned=sum(p.postings_pruned for p in parts),
        postings_fetched=sum(p.postings_fetched for p in parts),
        bytes_read=sum(p.bytes_read for p in parts),
        candidates_scored=sum(p.candidates_scored for p in parts),
        reranked=sum(p.reranked for p in parts),
        seconds=seconds,
        per_query=QueryStats(*(np.concatenate(figure) for figure in
                               zip(*(_arrays(p.per_query) for p in parts)))),
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
    models: Models | None = None
    """The model versions (None: the base model only)."""
    vector_dtype: str = "float32"
    """How base vectors are stored (``IndexConfig.vector_dtype``): other than float32, as
    given (raw), so they are scored against raw queries or mapped by :meth:`stored`."""

    @property
    def raw_vectors(self) -> bool:
        return self.vector_dtype != "float32"

    @property
    def vector_bytes(self) -> int:
        """Bytes of one stored base vector."""
        return self.dim * (1 if self.raw_vectors else 4)

    def stored(self, rows: np.ndarray, versions: np.ndarray) -> np.ndarray:
        """Decoded vectors (:func:`~anns.storage.decode_vectors`) in the collection basis:
        the raw base vectors of an integer collection mapped through it, in place."""
        if self.raw_vectors and len(rows):
            base = np.flatnonzero(versions == 0)
            if len(base) == len(rows) and rows.shape[1] == self.dim:
                return self.basis.apply_in_place(rows)
            rows[base, : self.dim] = self.basis.apply(np.ascontiguousarray(rows[base, : self.dim]))
        return rows

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
    view: ReadView, queries: np.ndarray, k: int, params: SearchParams,
    model: ModelVersion | None = None,
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    """Search validated raw queries (float32 [q, dim] of ``model``, default the base model);
    returns (ids, distances, stats)."""
    if len(queries) <= SERIAL_QUERIES:
        with serial_faiss():
            return _search(view, queries, k, params, model)
    return _search(view, queries, k, params, model)


def _search(
    view: ReadView, queries: np.ndarray, k: int, params: SearchParams,
    model: ModelVersion | None,
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    d_route, d_rerank = view.stage_dims(params)
    t0 = time.perf_counter()
    # full: the query on all dims of its own version (same-version rerank), None for the
    # base model; the base-space image routes, scans, and scores other versions' vectors
    base = model is None or model.is_base
    full = None if base else _full_query(model, queries, view)  # type: ignore[arg-type]
    # raw: the base model's queries as given, which the rerank scores vectors stored as
    # given against (with model versions it scores every version in collection space)
    mixed = view.models is not None and view.models.mixed
    raw = queries if view.raw_vectors and base and not mixed else None
    if raw is not None:
        # only routing and the scan read the collection space (a shorter rerank too): its
        # prefix, and the norm of the rest for the tail codec, cost a fraction of the product
        width = max(view.d_scan, d_rerank if d_rerank < view.dim else 0)
        queries = view.basis.apply_short(queries, width)
    elif model is None:
        queries = view.basis.apply(queries)
    else:
        queries = model.base_image(queries, view.basis)
    pids, _ = view.router.probe(prefix(queries, d_route), params.max_postings, params.eps2,
                                view.metric)
    route = time.perf_counter() - t0
    budget = max(1, int(params.fetch_budget_mb * (1 << 20) / view.posting_bytes))
    if pids.size <= budget:  # one chunk, the queries in their own order: nothing to put back
        ids, distances, stats = _search_chunk(
            view, queries, pids, k, params, d_rerank, full, model, raw)
    else:
        ids, distances, stats = _search_chunks(
            view, queries, pids, k, params, d_rerank, full, model, budget, raw)
    stats = replace(stats, seconds={"route": route, **stats.seconds})
    _heap_churn.add(stats.bytes_read)
    return ids, distances, stats


def _search_chunks(
    view: ReadView, queries: np.ndarray, pids: np.ndarray, k: int, params: SearchParams,
    d_rerank: int, full: np.ndarray | None, model: ModelVersion | None, budget: int,
    raw: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    """A batch whose postings exceed the fetch budget, chunk by chunk."""
    q = len(queries)
    ids = np.full((q, k), -1, dtype=np.int64)
    worst = np.inf if view.metric == "l2" else -np.inf
    distances = np.full((q, k), worst, dtype=np.float32)
    parts = []
    chunks = _chunks_by_postings(pids, budget, view.router.size)
    for rows in chunks:
        chunk_ids, chunk_dist, chunk_stats = _search_chunk(
            view, queries[rows], pids[rows], k, params, d_rerank,
            None if full is None else full[rows], model, None if raw is None else raw[rows],
        )
        ids[rows] = chunk_ids
        distances[rows] = chunk_dist
        parts.append(chunk_stats)
    stats = _merged(parts)
    # the chunks hold the queries in posting order: put each query's figures on its row
    order = np.concatenate(chunks)
    row_of = np.empty_like(order)
    row_of[order] = np.arange(len(order))
    stats = replace(stats, per_query=QueryStats(*(a[row_of] for a in _arrays(stats.per_query))))
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


def _full_query(model: ModelVersion, queries: np.ndarray, view: ReadView) -> np.ndarray:
    """A new version's queries for scoring its own vectors: ``apply`` (no offset) for ip and
    cosine with the offset's share taken back out later, the stored form for l2 (where the
    offset cancels in the difference)."""
    if view.metric == "l2":
        return model.stored_form(queries, view.basis)
    return model.transform.apply(queries)  # type: ignore[union-attr]


def _search_chunk(
    view: ReadView, queries: np.ndarray, pids: np.ndarray, k: int, params: SearchParams,
    d_rerank: int, full: np.ndarray | None = None, model: ModelVersion | None = None,
    raw: np.ndarray | None = None,
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
    stored = np.array([len(b) if b else 0 for b in blobs], dtype=np.int64)
    t2 = time.perf_counter()
    seconds["fetch"] = t2 - t1

    # scan: codes of every probed posting, for every query that chose it
    depth = params.rerank_depth(k)
    candidates_q = np.zeros(pids.shape, dtype=np.int64)
    candidates_q[probed] = sizes[local]
    cand = _scan(view, queries, lists, assign, candidates_q.sum(1), depth)
    del lists, blobs
    t3 = time.perf_counter()
    seconds["scan"] = t3 - t2

    # rerank: exact distances on full vectors
    out_ids, out_dist, vector_bytes, reranked, reranked_bytes = _rerank(
        view, queries, cand, k, d_rerank, full, model, raw)
    seconds["rerank"] = time.perf_counter() - t3

    # per query: what each probed posting held and weighed, summed along the query's row
    probed_q = probed.sum(1)
    bytes_q = np.zeros(pids.shape, dtype=np.int64)
    bytes_q[probed] = stored[local]
    per_query = QueryStats(
        postings_probed=probed_q.astype(np.int64, copy=False),
        candidates_scored=candidates_q.sum(1),
        bytes_read=bytes_q.sum(1) + reranked_bytes,
        reranked=reranked,
    )
    postings_probed = int(probed_q.sum())
    stats = SearchStats(
        queries=len(pids),
        postings_probed=postings_probed,
        postings_pruned=min(params.max_postings, view.router.size) * len(pids) - postings_probed,
        postings_fetched=len(unique),
        bytes_read=int(stored.sum()) + vector_bytes,
        candidates_scored=int(sizes[local].sum()),
        reranked=int(reranked.sum()),
        seconds=seconds,
        per_query=per_query,
    )
    return out_ids, out_dist, stats


_EMPTY_LIST = (np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.uint8))

#: Copies of one vector the scan makes room for: it asks the codec for ``depth x`` this many
#: candidates (fewer if fewer postings were probed, or ``replica_cap`` is lower), then keeps
#: the first ``depth`` distinct. A vector comes back once per probed posting holding it, up to
#: ``replica_cap`` (8) times, but the nearest candidates average about 1.5 copies, and a heap
#: of 8 x depth cost the scan its time: on Fashion-MNIST (1,000 queries, 24 postings, depth
#: 20) 4 took the batch scan from 101 to 63 ms at the same recall. A query left with fewer
#: than ``depth`` distinct candidates while its postings hold more is scanned again with room
#: for every copy (:func:`_scan`), so no query reranks fewer than it would have.
SCAN_COPIES = 4


def _scan(
    view: ReadView, queries: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray]],
    assign: np.ndarray, entries: np.ndarray, depth: int,
) -> np.ndarray:
    """The first ``depth`` distinct candidates of each query, in the codec's order, from the
    lists assigned to it; -1 padding, in rows no wider than the most codes a query's lists
    hold. ``entries``: int64 [q], codes in each query's lists."""
    # no query can get more candidates than its lists hold: size neither the heaps nor the
    # rows beyond that (a deep rerank of a small collection would allocate [q, depth])
    depth = max(1, min(depth, int(entries.max(initial=0))))
    copies = max(1, min(view.replica_cap, assign.shape[1]))
    pool = min(copies, SCAN_COPIES)
    scan_k = max(1, min(depth * pool, int(entries.max(initial=0))))
    _, cand = view.codec.scan(queries, lists, assign, scan_k)
    cand = _first_unique(cand, depth)
    if pool < copies:
        # copies crowded distinct vectors out of the heap: those queries again, with room for
        # every copy (depth x copies entries hold `depth` distinct ones wherever they exist)
        short = np.flatnonzero((cand[:, -1] < 0) & (entries > scan_k))
        if len(short):
            full_k = max(1, min(depth * copies, int(entries[short].max())))
            _, again = view.codec.scan(queries[short], lists, assign[short], full_k)
            cand[short] = _first_unique(again, depth)
    return cand


def _first_unique(cand: np.ndarray, depth: int) -> np.ndarray:
    """Per row, the first ``depth`` distinct non-negative ids in order; -1 padding."""
    if len(cand) == 1:  # one query: first occurrences straight from np.unique
        row = cand[0][cand[0] >= 0]
        _, first = np.unique(row, return_index=True)
        kept = row[np.sort(first)[:depth]]
        out = np.full((1, depth), -1, dtype=cand.dtype)
        out[0, : len(kept)] = kept
        return out
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
    view: ReadView, queries: np.ndarray, cand: np.ndarray, k: int, d_rerank: int,
    full: np.ndarray | None = None, model: ModelVersion | None = None,
    raw: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """Top-k among candidates [q, r] (-1 = none) by distance on the first ``d_rerank`` dims
    of their full vectors (exact when that is all); (ids, distances, bytes read, vectors
    reranked per query int64 [q], their stored bytes per query int64 [q]).

    Vectors stored as given (an integer ``vector_dtype``) are scored on all dims against
    ``raw``, the queries as given: the basis is orthonormal, so the distances are the
    collection space's without mapping a single vector. A shorter ``d_rerank`` maps them.

    With model versions (:mod:`anns.models`): a candidate of the query's own version is
    scored on all its dims (``full``), one of another version on the base-space images,
    then calibrated onto the same-version scale."""
    valid = cand >= 0
    if not valid.any():
        worst = np.inf if view.metric == "l2" else -np.inf
        none = np.zeros(len(cand), dtype=np.int64)
        return (np.full((len(cand), k), -1, np.int64), np.full((len(cand), k), worst, np.float32),
                0, none, none)
    unique, inverse = np.unique(cand[valid], return_inverse=True)
    blobs = view.storage.get_vectors(unique)
    versioned = view.models is not None and view.models.mixed
    if blobs.count(None) == 0 and not versioned:  # the common case: one join, no loop
        present = np.ones(len(unique), dtype=bool)
        joined = b"".join(blobs)  # type: ignore[arg-type]
        if view.raw_vectors:  # left as stored: the scoring converts what it gathers
            vectors = np.frombuffer(joined, dtype=view.vector_dtype).reshape(-1, view.dim)
        else:
            vectors = np.frombuffer(joined, dtype="<f4").reshape(-1, view.dim)
        nbytes = len(joined)
        sizes = np.full(len(unique), view.vector_bytes, dtype=np.int64)
    else:  # model versions, or candidates deleted since their posting was scanned
        present = np.array([b is not None for b in blobs], dtype=bool)
        found = [b for b in blobs if b is not None]
        sizes = np.array([len(b) if b is not None else 0 for b in blobs], dtype=np.int64)
        nbytes = int(sizes.sum())
        decoded, found_versions = decode_vectors(found, view.dim, view.vector_dtype)
        if versioned:  # every version is scored in the collection space
            decoded = view.stored(decoded, found_versions)
        vectors = np.zeros((len(unique), max(view.dim, decoded.shape[1])), dtype=np.float32)
        versions = np.full(len(unique), -1, dtype=np.int64)
        vectors[present, : decoded.shape[1]] = decoded
        versions[present] = found_versions

    slot = np.zeros(cand.shape, dtype=np.int64)
    slot[valid] = inverse
    # a candidate deleted since it was scanned has no full vector: it cannot be returned
    alive = valid & present[slot]
    if versioned:
        scores = _versioned_scores(view, queries, vectors, versions, slot, d_rerank, full, model)
    else:
        if view.raw_vectors and d_rerank == view.dim:
            assert raw is not None, "vectors stored as given are scored against raw queries"
            queries = raw
        elif view.raw_vectors:
            vectors = view.basis.apply_prefix(vectors.astype(np.float32), d_rerank)
            queries = queries[:, :d_rerank]
        elif d_rerank < view.dim:
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
    per_query = np.where(alive, sizes[slot], 0).sum(1).astype(np.int64)
    return top_ids, top_dist, nbytes, alive.sum(1).astype(np.int64), per_query


def exhaustive_scores(
    view: ReadView, queries: np.ndarray, raw: np.ndarray | None, model: ModelVersion | None,
    vectors: np.ndarray, versions: np.ndarray,
) -> np.ndarray:
    """Every query's score [q, n] against every one of ``vectors`` (decoded full width and
    in the collection space, :meth:`ReadView.stored`), on all dims, as the rerank scores a
    candidate: brute-force truth for a collection holding several model versions.
    ``queries``: the base-space images; ``raw``: the queries as ``model`` embedded them (for
    its own vectors), None for the base model."""
    assert view.models is not None
    full = None if model is None or model.is_base or raw is None else _full_query(model, raw, view)
    return _versioned_scores(view, queries, vectors, versions, None, view.dim, full, model)


def _versioned_scores(
    view: ReadView, queries: np.ndarray, vectors: np.ndarray, versions: np.ndarray,
    slot: np.ndarray | None, d_rerank: int, full: np.ndarray | None,
    model: ModelVersion | None,
) -> np.ndarray:
    """Scores of a collection holding several model versions (see :mod:`anns.models`):
    base-space images on ``min(d_rerank, dim)`` dims for every candidate, calibrated where the
    candidate's version is not the query's; all dims of the query's own version where it
    is. ``slot`` as for :func:`_exact_scores`."""
    assert view.models is not None
    d = min(d_rerank, view.dim)
    scores = _exact_scores(view.metric, queries[:, :d], vectors[:, :d], slot)
    own = 0 if model is None else model.index
    cand_version = versions[slot] if slot is not None else np.broadcast_to(versions, scores.shape)
    by_index = view.models.by_index()
    query_model = by_index.get(own)
    for index in np.unique(cand_version).tolist():
        if index == own or index < 0:
            continue
        a, b = (1.0, 0.0)
        vec_model = by_index.get(index)
        if query_model is not None and not query_model.is_base:
            a, b = query_model.affine("query")
        elif vec_model is not None:
            a, b = vec_model.affine("vector")
        if (a, b) != (1.0, 0.0):
            mask = cand_version == index
            scores[mask] = a * scores[mask] + b
    if full is not None and model is not None and (cand_version == own).any():
        width = full.shape[1]
        same = _exact_scores(view.metric, full, vectors[:, :width], slot)
        if view.metric != "l2":
            # stored = [x A + offset, x E]: take the query's share of the offset back out
            t = model.transform
            assert t is not None
            same -= (full[:, : t.old_dim] @ t.offset)[:, None]
        scores = np.where(cand_version == own, same, scores)
    return scores


def _exact_scores(
    metric: Metric, queries: np.ndarray, vectors: np.ndarray, slot: np.ndarray | None
) -> np.ndarray:
    """Exact distance (l2) or similarity (ip, cosine) of query i to vectors[slot[i, j]], or
    to vectors[j] for every query when ``slot`` is None.

    Gathers [rows, r, d] blocks of bounded size (~8 MiB as float32) rather than the whole
    chunk at once; integer vectors are gathered as stored, a quarter of the bytes to move,
    and converted block by block. Without ``slot`` it is one matrix product (l2 in the
    expanded form, as faiss's brute force computes it).
    """
    if slot is None:
        vectors = vectors.astype(np.float32, copy=False)
        products = queries @ vectors.T
        if metric != "l2":
            return products
        sq_q = np.einsum("qd,qd->q", queries, queries)[:, None]
        sq_v = np.einsum("nd,nd->n", vectors, vectors)[None, :]
        return np.maximum(sq_q + sq_v - 2 * products, 0.0).astype(np.float32, copy=False)
    q, r = slot.shape
    out = np.empty((q, r), dtype=np.float32)
    step = max(1, (8 << 20) // max(1, r * vectors.shape[1] * 4))
    for s in range(0, q, step):
        block = vectors[slot[s : s + step]]  # [rows, r, d]
        if block.dtype != np.float32:
            block = block.astype(np.float32)
        qs = queries[s : s + step]
        if metric == "l2":
            # the difference form, not |q|^2 + |v|^2 - 2qv: no cancellation for near points
            block -= qs[:, None, :]
            out[s : s + step] = np.einsum("qrd,qrd->qr", block, block)
        else:
            out[s : s + step] = np.matmul(block, qs[:, :, None])[:, :, 0]
    return out
