"""Search profiles: the fastest query-time knobs that reach a recall target on this collection.

:func:`tune` measures instead of guessing. It samples held-out queries from the collection's
own vectors (leave-one-out: a query's own id is removed from its truth and from its results),
or takes queries the caller gives (a sample of real traffic: stored vectors sit where the
clustering was fitted and make easier queries than real ones: on SIFT 5k a profile tuned to
0.95 on held-out vectors reached 0.82 on half the dataset's queries, one tuned on the other
half 0.968), computes their exact neighbours by brute force over every stored vector, then
explores the knobs a search may change:

* ``d_route`` (the built prefix and shorter ones), ``eps2`` and ``d_rerank`` span the
  *shapes* of a search;
* for each shape, recall grows with ``max_postings``, so a walk up the caps finds the fewest
  postings that reach the target; it also grows with ``refine_factor`` (a deeper rerank sees
  more candidates), so each deeper rerank searches only the caps below the shallower one's,
  and deepening stops when it saves no posting.

Each shape's cheapest passing point is timed; the best few are timed again and the fastest
wins. A point passes when a lower confidence bound of its recall (one standard error below
the measured mean) reaches the target, so a profile tuned on a few hundred queries still
meets its target on others.

``d_scan`` is what the stored codes hold, so trying another means re-encoding the postings
(:meth:`anns.Collection.recode`: one pass over the stored vectors). Given ``d_scans``, tune
explores every shape above on codes of each prefix, at the collection's code size (equal
bytes per vector: AdANNS's trade of fewer dims for finer codes), and keeps the winner's.

Profiles are stored with the collection by target (``meta/profiles``); the latest tuned is the
collection's default, and a search names one with ``SearchParams(target_recall=...)``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import faiss
import numpy as np

from anns.config import SearchParams, validated
from anns.errors import EmptyCollectionError, InvalidArgumentError
from anns.search import exhaustive_scores
from anns.vectors import as_vectors, check_k

if TYPE_CHECKING:
    from anns.index import Collection
    from anns.models import ModelVersion

Objective = Literal["batch", "single"]
QuerySource = Literal["collection", "given"]

#: max_postings values the bisection may choose from.
POSTING_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
EPS2_STEPS = (0.3, 1.0, math.inf)
REFINE_STEPS = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Shapes whose cheapest passing point is timed again (by the objective) before choosing.
FINALISTS = 4
#: A walk stops at a failing point this much slower than the fastest passing one found so
#: far (a margin for timing noise: the finalists are timed again).
SLOWER_THAN_BEST = 0.6
#: Queries timed one per call for the ``single`` objective.
SINGLE_QUERIES = 100


@dataclass(frozen=True)
class TunePoint:
    """One measured setting: its knobs, recall on the tuning queries and speed."""

    params: dict[str, Any]
    recall: float
    recall_lower: float
    qps: float
    d_scan: int
    """Dims of the codes scanned (what the postings held when it was measured)."""


@dataclass(frozen=True)
class Profile:
    """The knobs chosen for a recall target and what they measured."""

    target_recall: float
    params: dict[str, Any]
    recall: float
    qps: float
    objective: Objective
    queries: int
    k: int
    d_scan: int
    source: QuerySource = "collection"
    """Where the tuning queries came from: ``collection`` (held-out stored vectors) or
    ``given`` (the caller's)."""

    def search_params(self) -> SearchParams:
        return validated(SearchParams, **self.params)


@dataclass(frozen=True)
class TuneReport:
    """The chosen profile and every point measured on the way (the curve)."""

    profile: Profile
    curve: list[TunePoint] = field(default_factory=list)
    truth_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": asdict(self.profile),
            "curve": [asdict(p) for p in self.curve],
            "truth_seconds": round(self.truth_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


def tune(
    coll: Collection,
    recall: float,
    *,
    queries: int = 300,
    k: int = 10,
    objective: Objective = "batch",
    seed: int = 0,
    store: bool = True,
    d_scans: Sequence[int] | None = None,
    query_vectors: Any = None,
    model: str | None = None,
) -> TuneReport:
    """Find the fastest search knobs reaching ``recall``@k on ``queries`` held-out vectors,
    or on ``queries`` rows sampled (with ``seed``) from ``query_vectors``.

    ``objective``: ``batch`` times all tuning queries in one call (throughput), ``single``
    one query per call (latency). With ``store`` the profile is saved with the collection and
    becomes its default. ``d_scans``: scan prefixes to try as well; each is measured on
    postings re-encoded for it (:meth:`Collection.recode`, with the collection's codec and
    ``pq_m``; a prefix shorter than dim also stores its two-byte tail norm, where the
    collection's ``tail_norms`` and metric call for it) and the collection keeps the winner's
    codes. Profiles of other targets are kept when the winner's d_scan is the one they were
    measured at, dropped else (as by a recode); when no setting passes, the postings are
    re-encoded at the d_scan they had and the stored profiles stay as they were.

    ``query_vectors``: float [n, d] queries embedded by ``model`` (default, as for a search:
    the current one), of which ``queries`` rows are sampled and validated as a search's
    (DimensionMismatchError, DTypeError, NonFiniteError, the row named by its number in
    ``query_vectors``). They are searched as ``Collection.search(..., model=model)`` searches
    them, and their truth is every stored vector scored as its rerank scores it (with model
    versions: on all of their own version's dims, calibrated across versions).

    Raises InvalidArgumentError for a target outside (0, 1], a k or query count out of range,
    too few stored vectors or a d_scan the collection cannot hold, EmptyCollectionError for an
    empty collection, NotFoundError for an unknown model.
    """
    if isinstance(recall, bool) or not isinstance(recall, int | float):
        raise InvalidArgumentError(f"target recall must be a number, got {recall!r}")
    if not 0.0 < recall <= 1.0:
        raise InvalidArgumentError(f"target recall must be in (0, 1], got {recall}")
    k = check_k(k)
    if isinstance(queries, bool) or not isinstance(queries, int | np.integer) or queries < 1:
        raise InvalidArgumentError(f"queries must be a whole number of at least 1, got "
                                   f"{queries!r}")
    if model is not None and query_vectors is None:
        raise InvalidArgumentError("model names what embedded query_vectors; none were given")
    started = time.perf_counter()
    view = coll._require_view()
    count = coll.count()
    if count == 0:
        raise EmptyCollectionError(f"collection at {coll.path} is empty: nothing to tune on")
    if count <= k:
        raise InvalidArgumentError(
            f"tuning recall@{k} needs more than {k} stored vectors; the collection has {count}"
        )

    if d_scans:
        if not store:
            raise InvalidArgumentError(
                "trying d_scan values re-encodes the postings: it cannot be a dry run"
            )
        bad = [d for d in d_scans if not view.d_route <= d <= coll.dim]
        if bad:
            raise InvalidArgumentError(
                f"d_scan must be between the collection's d_route {view.d_route} and its dim "
                f"{coll.dim}; got {bad}"
            )
    t0 = time.perf_counter()
    given = query_vectors is not None
    if given:
        raw, version, truth = _given(coll, query_vectors, queries, k, seed, model)
        n_queries, self_ids = len(raw), None

        def run(rows: slice, params: SearchParams) -> np.ndarray:
            return coll.search(raw[rows], k, params, model=version.name).ids
    else:
        space, self_ids, truth = _held_out(coll, min(queries, count), k, seed)
        space, n_queries = coll._space_queries(space), len(space)

        def run(rows: slice, params: SearchParams) -> np.ndarray:
            # a held-out query finds itself too: ask for one more, dropped below
            return coll._search_space(space[rows], k + 1, params).ids
    truth_seconds = time.perf_counter() - t0

    def measure(params: SearchParams, timing: Objective = "batch", repeats: int = 1) -> TunePoint:
        """Recall of ``params`` on the tuning queries and their QPS (best of ``repeats``)."""
        best, found = math.inf, None
        for _ in range(repeats):
            t = time.perf_counter()
            if timing == "batch":
                found, n = run(slice(None), params), n_queries
            else:  # latency: one query per call, on up to SINGLE_QUERIES of them
                n = min(n_queries, SINGLE_QUERIES)
                for i in range(n):
                    run(slice(i, i + 1), params)
            best = min(best, time.perf_counter() - t)
        if found is None:
            found = run(slice(None), params)  # the same results, for the recall
        got = found if self_ids is None else _drop_self(found, self_ids, k)
        mean = _recall(got, truth)
        lower = mean - math.sqrt(max(mean * (1 - mean), 0.0) / truth.size)
        return TunePoint(_knobs(params), round(mean, 5), round(lower, 5), round(n / best, 1),
                         coll._require_view().d_scan)

    # what the stored profiles were measured on, to keep them with it
    kept, kept_default, original = dict(coll._profiles), coll._default_profile, view.d_scan
    curve: list[TunePoint] = []
    best: tuple[TunePoint, int] | None = None
    try:
        for d_scan in d_scans or [original]:
            if d_scan != coll._require_view().d_scan:
                coll.recode(d_scan=d_scan)
            point = _explore(coll, measure, recall, objective, curve)
            if point is not None and (best is None or point.qps > best[0].qps):
                best = (point, d_scan)
        if best is None:
            best_seen = max(curve, key=lambda p: p.recall)
            raise InvalidArgumentError(
                f"no setting reaches recall@{k} {recall} on this collection: the best measured "
                f"is {best_seen.recall:.4f} at {best_seen.params}"
            )
    except Exception:
        if coll._require_view().d_scan != original:  # the codes it had, and their profiles
            coll.recode(d_scan=original)
            coll._store_profiles(kept, kept_default)
        raise
    winner, d_scan = best
    if d_scan != coll._require_view().d_scan:
        coll.recode(d_scan=d_scan)
    profile = Profile(
        target_recall=recall, params=winner.params, recall=winner.recall, qps=winner.qps,
        objective=objective, queries=n_queries, k=k, d_scan=d_scan,
        source="given" if given else "collection",
    )
    if store:
        others = kept if d_scan == original else {}
        coll._store_profiles({**others, recall: profile}, recall)
    return TuneReport(profile, curve, truth_seconds, time.perf_counter() - started)


def _explore(
    coll: Collection, measure: Any, recall: float, objective: Objective,
    curve: list[TunePoint],
) -> TunePoint | None:
    """The fastest passing point (timed by ``objective``) over the search shapes of the
    collection's current codes, or None when none passes; every measurement joins ``curve``."""
    view = coll._require_view()
    finalists: list[tuple[float, SearchParams]] = []
    steps = [p for p in POSTING_STEPS if p < view.router.size] + [view.router.size]
    for d_route in _route_dims(view.d_route):
        for d_rerank in _rerank_dims(view):
            for eps2 in EPS2_STEPS:
                def at(mp: int, refine: float, d_route: int = d_route,
                       d_rerank: int = d_rerank, eps2: float = eps2) -> SearchParams:
                    return SearchParams(
                        max_postings=mp, eps2=eps2, refine_factor=refine,
                        d_route=d_route, d_rerank=d_rerank,
                    )
                floor = SLOWER_THAN_BEST * max((q for q, _ in finalists), default=0.0)
                finalists.extend(_refine_frontier(measure, at, steps, recall, curve, floor))
    if not finalists:
        return None
    finalists.sort(key=lambda f: -f[0])
    timed = [measure(params, objective, repeats=3) for _, params in finalists[:FINALISTS]]
    curve.extend(timed)
    passing = [p for p in timed if p.recall_lower >= recall]
    return max(passing, key=lambda p: p.qps) if passing else None


def _refine_frontier(
    measure: Any, at: Any, steps: list[int], recall: float, curve: list[TunePoint],
    floor: float = 0.0,
) -> list[tuple[float, SearchParams]]:
    """For one shape, the cheapest passing posting cap at each rerank depth worth trying.

    A deeper rerank reranks a superset of the candidates, so its cheapest passing cap is at
    most the shallower one's: each depth searches only the caps below the last one found,
    and the walk stops at the first depth that saves no posting (deeper would only rerank
    more at the same cap). A walk also gives up once a failing point runs under ``floor`` QPS
    (more postings or a deeper rerank only run slower: it cannot win)."""
    found: list[tuple[float, SearchParams]] = []
    top = len(steps)
    for refine in REFINE_STEPS:
        hit = _cheapest_passing(measure, lambda mp: at(mp, refine), steps[:top], recall, curve,
                                floor)
        if hit is None:
            if found:  # a deeper rerank that fails where a shallower passed: noise, stop
                break
            continue
        qps, params, index = hit
        found.append((qps, params))
        if index + 1 == top and len(found) > 1:
            break  # no posting saved by reranking deeper
        top = index + 1
    return found


def _cheapest_passing(
    measure: Any, at: Any, steps: list[int], recall: float, curve: list[TunePoint],
    floor: float = 0.0,
) -> tuple[float, SearchParams, int] | None:
    """The fewest postings (from ``steps``) whose recall bound reaches ``recall``, as
    (batch qps, params, index in ``steps``), or None when even the most fail. Recall grows
    with max_postings, so the walk goes up every other step from the cheap end (cheap points
    are fast to measure) and then tries the step it skipped."""
    last_fail = -1
    for i in list(range(0, len(steps), 2)) + ([len(steps) - 1] if len(steps) % 2 == 0 else []):
        point = measure(at(steps[i]))
        curve.append(point)
        if point.recall_lower >= recall:
            if i - 1 > last_fail:  # the skipped step in between may pass too
                between = measure(at(steps[i - 1]))
                curve.append(between)
                if between.recall_lower >= recall:
                    return between.qps, at(steps[i - 1]), i - 1
            return point.qps, at(steps[i]), i
        if point.qps < floor:
            return None  # slower than a point that passes, and only getting slower
        last_fail = i
    return None


def _route_dims(built: int) -> list[int]:
    """The built routing prefix and up to two shorter ones (halves, at least 8 dims)."""
    dims = [built]
    while len(dims) < 3 and dims[-1] // 2 >= 8:
        dims.append(dims[-1] // 2)
    return dims


def _rerank_dims(view: Any) -> list[int]:
    """The collection's rerank dims, and the shortest prefix keeping 99.9% of the energy
    (not for vectors stored as given: a prefix of theirs costs mapping them through the basis,
    more than the dims it saves, and reads the same bytes)."""
    full = view.d_rerank
    if view.raw_vectors:
        return [full]
    energy = np.cumsum(view.basis.energy[:full])
    short = int(np.searchsorted(energy, 0.999 * energy[-1]) + 1) if len(energy) else full
    return [full] if short >= full or view.basis.kind == "identity" else [full, short]


def _knobs(params: SearchParams) -> dict[str, Any]:
    knobs = params.model_dump(exclude={"fetch_budget_mb", "target_recall"})
    return {name: value for name, value in knobs.items() if value is not None}


def _held_out(
    coll: Collection, n: int, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` stored vectors as queries in collection space (searched by
    :meth:`Collection._search_space`, whatever model versions the collection holds), their
    ids, and their exact k nearest other ids."""
    rng = np.random.default_rng(seed)
    self_ids = np.sort(rng.choice(coll._storage.vector_ids(), n, replace=False))
    queries = coll._stored(self_ids)  # in the collection basis
    # k + 1 because each query is itself stored
    truth = _drop_self(_exact(coll, queries, k + 1), self_ids, k)
    return queries, self_ids, truth


def _given(
    coll: Collection, vectors: Any, n: int, k: int, seed: int, model: str | None
) -> tuple[np.ndarray, ModelVersion, np.ndarray]:
    """Up to ``n`` rows of the caller's queries embedded by ``model`` (a random sample, in
    their order, when there are more), validated as a search validates them; that model's
    version; and their exact k nearest ids. Only the sampled rows are read and validated; an
    error names a row by its number in ``vectors``."""
    view = coll._require_view()
    version = (view.models or coll._models).get(model)
    raw = np.asarray(vectors)  # a memory-mapped query log stays on disk but for the sample
    if raw.size == 0:
        raise InvalidArgumentError("no tuning queries given: query_vectors has no rows")
    rows = None
    if raw.ndim == 2 and len(raw) > n:
        rows = np.sort(np.random.default_rng(seed).choice(len(raw), n, replace=False))
        raw = raw[rows]
    raw = as_vectors(raw, version.dim, metric=coll.config.metric, what="tuning query",
                     rows=rows, of=version.owner)
    # the base-space image routes and scans every search, whichever model embedded it
    queries = np.ascontiguousarray(version.base_image(raw, view.basis)[:, : coll.dim])
    return raw, version, _exact(coll, queries, k, raw, version)


def _exact(
    coll: Collection, queries: np.ndarray, k: int, raw: np.ndarray | None = None,
    model: ModelVersion | None = None,
) -> np.ndarray:
    """Ids of the exact ``k`` nearest stored vectors of collection-space queries (the
    base-space images of ``raw``, as ``model`` embedded them), by brute force in the
    collection basis (where distances equal the raw ones); -1 padding. With model versions
    every vector is scored as the rerank scores it (:func:`anns.search.exhaustive_scores`)."""
    storage, dim, metric = coll._storage, coll.dim, coll.config.metric
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric != "l2")
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    view = coll._require_view()
    versioned = view.models is not None and view.models.mixed
    chunk = max(1, (32 << 20) // (4 * dim))
    for chunk_ids, vectors, versions in storage.iter_vectors(
        dim, view.vector_dtype, chunk, full_width=versioned
    ):
        vectors = view.stored(vectors, versions)
        n = min(k, len(vectors))
        if versioned:
            scores = exhaustive_scores(view, queries, raw, model, vectors, versions)
            order = np.argpartition(scores if metric == "l2" else -scores, n - 1, axis=1)
            i = order[:, :n]
            d = np.take_along_axis(scores, i, axis=1)
        else:
            d, i = faiss.knn(queries, vectors, n, faiss_metric)
        heap.add_result(np.ascontiguousarray(d, dtype=np.float32),
                        np.where(i >= 0, chunk_ids[np.maximum(i, 0)], -1))
    heap.finalize()
    return heap.I


def _drop_self(found: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Rows of k+1 ids without the query's own id (or without the last, when absent)."""
    is_self = found == self_ids[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones(found.shape, dtype=bool)
    keep[np.arange(len(found)), drop] = False
    return found[keep].reshape(len(found), found.shape[1] - 1)[:, :k]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


def profiles_from_json(blob: bytes | None) -> dict[float, Profile]:
    """Stored profiles by target (``meta/profiles``)."""
    if not blob:
        return {}
    stored = json.loads(blob)
    sources = stored.get("sources", {})
    known = {f.name for f in fields(Profile)}
    # keys a later version added are skipped: an older reader keeps the profile's knobs
    return {float(t): Profile(**{key: v for key, v in p.items() if key in known},
                              source=sources.get(t, "collection"))
            for t, p in stored["profiles"].items()}


def profiles_to_json(profiles: dict[float, Profile], default: float | None) -> bytes:
    """``meta/profiles``. Each profile's ``source`` is kept beside the profiles, not in them:
    versions before it refused a profile with a key they did not know."""
    return json.dumps({
        "default": default,
        "profiles": {str(t): _without_source(p) for t, p in profiles.items()},
        "sources": {str(t): p.source for t, p in profiles.items() if p.source != "collection"},
    }).encode()


def _without_source(profile: Profile) -> dict[str, Any]:
    stored = asdict(profile)
    del stored["source"]
    return stored


def default_target(blob: bytes | None) -> float | None:
    return float(json.loads(blob)["default"]) if blob else None
