"""The read path: exhaustive search is brute force, defaults reach recall, results are well
formed."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import anns
import strategies as S
from anns import MAX_K, InvalidArgumentError, SearchParams
from anns.evaluation import exact_knn, recall_at
from anns.quantization import FlatCodec
from anns.search import SCAN_COPIES, _first_unique, _scan
from invariants import exhaustive, assert_matches_brute_force, brute_force


# --------------------------------------------------------------- exhaustive = brute force
@pytest.mark.parametrize("codec", ["sq8", "flat"])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@given(data=S.datasets(min_n=30, max_n=300), k=st.integers(1, 40), cfg=st.data())
def test_exhaustive_search_is_brute_force(
    metric: str, codec: str, data: tuple[np.ndarray, np.ndarray], k: int, cfg: st.DataObject
) -> None:
    base, queries = data
    config = cfg.draw(S.index_configs(base.shape[1], metric=metric, codec=codec))
    with tempfile.TemporaryDirectory() as d:
        anns.build(Path(d) / "c", base, config=config)
        with anns.Collection.open(Path(d) / "c") as coll:
            result = coll.search(queries, k, exhaustive(len(base), k))
    assert_matches_brute_force(
        result, base, np.arange(len(base)), queries, k, metric, exact_ids=True
    )


# ------------------------------------------------------------------- default recall
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_default_settings_reach_recall(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray], metric: str
) -> None:
    base, queries = clustered
    anns.build(tmp_path / "c", base, config={"metric": metric})
    with anns.Collection.open(tmp_path / "c") as coll:
        result = coll.search(queries, 10)
    truth, _ = exact_knn(base, queries, 10, metric)  # type: ignore[arg-type]
    assert recall_at(result.ids, truth, 10) >= 0.95


def test_default_settings_reach_recall_with_small_postings(
    tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]
) -> None:
    # many small postings and replicas: routing and pruning have to do real work
    base, queries = clustered
    anns.build(tmp_path / "c", base, config={"posting_size": 8, "max_posting_size": 24})
    with anns.Collection.open(tmp_path / "c") as coll:
        result = coll.search(queries, 10, return_stats=True)
    truth, _ = exact_knn(base, queries, 10)
    assert recall_at(result.ids, truth, 10) >= 0.95
    assert result.stats is not None and result.stats.postings_fetched < 48 * len(queries)


# --------------------------------------------------------------------- result shape
@given(params=S.search_params, k=st.integers(1, 60))
def test_any_params_give_exact_distances_sorted_and_unique(
    built_small: Path, small: tuple[np.ndarray, np.ndarray], params: SearchParams, k: int
) -> None:
    base, queries = small
    with anns.Collection.open(built_small) as coll:
        result = coll.search(queries, k, params)
    assert result.ids.shape == (len(queries), k) and result.ids.dtype == np.int64
    assert result.distances.dtype == np.float32
    found = result.ids >= 0
    assert found[:, 0].all(), "every query finds something"
    for row in range(len(queries)):
        ids = result.ids[row][found[row]]
        assert (found[row][: len(ids)]).all(), "padding only at the end"
        assert len(set(ids.tolist())) == len(ids)
        true = ((base[ids].astype(np.float64) - queries[row]) ** 2).sum(1)
        np.testing.assert_allclose(result.distances[row, : len(ids)], true, rtol=1e-4, atol=1e-5)
        assert (np.diff(result.distances[row, : len(ids)]) >= 0).all()
        assert (result.distances[row, len(ids):] == np.inf).all()


def test_fetch_budget_does_not_change_results(
    built_small: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    # the budget only decides how queries are grouped into chunks sharing posting reads
    _, queries = small
    with anns.Collection.open(built_small) as coll:
        whole = coll.search(queries, 10, fetch_budget_mb=1024.0)
        one_by_one = coll.search(queries, 10, fetch_budget_mb=1e-9)
        few = coll.search(queries, 10, fetch_budget_mb=0.002)
    for other in (one_by_one, few):
        np.testing.assert_array_equal(whole.ids, other.ids)
        np.testing.assert_array_equal(whole.distances, other.distances)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_k_beyond_count_pads_with_minus_one(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray], metric: str
) -> None:
    base, queries = small
    anns.build(tmp_path / "c", base[:50], config={"metric": metric, "posting_size": 8})
    with anns.Collection.open(tmp_path / "c") as coll:
        result = coll.search(queries, MAX_K, exhaustive(50, MAX_K))
    assert result.ids.shape == (len(queries), MAX_K)
    assert (result.ids[:, :50] >= 0).all() and (result.ids[:, 50:] == -1).all()
    worst = np.inf if metric == "l2" else -np.inf
    assert (result.distances[:, 50:] == worst).all()
    assert_matches_brute_force(result, base[:50], np.arange(50), queries, MAX_K, metric)


def test_one_query_vector_is_a_batch_of_one(
    built_small: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    with anns.Collection.open(built_small) as coll:
        one = coll.search(queries[3], 5)
        batch = coll.search(queries, 5)
        integer = coll.search(np.round(queries[:2] * 10).astype(np.int32), 5, exhaustive(600, 5))
    assert one.ids.shape == (1, 5)
    np.testing.assert_array_equal(one.ids[0], batch.ids[3])
    want, _ = brute_force(base, np.arange(len(base)), np.round(queries[:2] * 10), 5, "l2")
    np.testing.assert_array_equal(integer.ids, want)


def test_a_stored_vector_finds_itself_first(
    built_small: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, _ = small
    with anns.Collection.open(built_small) as coll:
        result = coll.search(base[::7], 1)
    np.testing.assert_array_equal(result.ids[:, 0], np.arange(0, len(base), 7))
    np.testing.assert_allclose(result.distances[:, 0], 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- stats
def test_stats_account_for_the_work(
    built_small: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    _, queries = small
    q = len(queries)
    with anns.Collection.open(built_small) as coll:
        postings = coll.info()["postings"]
        assert coll.search(queries, 10).stats is None
        narrow = coll.search(queries, 10, max_postings=4, eps2=0.0, return_stats=True).stats
        wide = coll.search(queries, 10, exhaustive(600, 10), return_stats=True).stats
    assert narrow is not None and wide is not None
    assert narrow.queries == wide.queries == q
    assert narrow.postings_probed == q, "eps2=0 keeps only the nearest posting"
    assert narrow.postings_probed + narrow.postings_pruned == 4 * q
    assert wide.postings_probed == postings * q and wide.postings_pruned == 0
    assert wide.postings_fetched == postings
    assert narrow.postings_fetched <= q
    assert wide.candidates_scored >= 600 * q, "exhaustive search scores every entry"
    assert wide.reranked == 600 * q, "exhaustive search reranks every vector"
    assert 0 < narrow.bytes_read < wide.bytes_read
    assert set(wide.seconds) == {"route", "fetch", "scan", "rerank"}
    assert all(v >= 0 for v in wide.seconds.values())


def test_eps2_prunes_monotonically(built_small: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    _, queries = small
    with anns.Collection.open(built_small) as coll:
        stats = [coll.search(queries, 10, eps2=e, return_stats=True).stats
                 for e in (0.0, 0.2, 0.6, 2.0, 100.0)]
    probed = [s.postings_probed for s in stats if s is not None]
    assert len(probed) == 5
    assert probed == sorted(probed) and probed[0] < probed[-1]



def assert_per_query_sums_to_totals(stats: anns.SearchStats) -> None:
    per = stats.per_query
    assert len(per) == stats.queries
    for name in ("postings_probed", "candidates_scored", "bytes_read", "reranked"):
        values = getattr(per, name)
        assert values.shape == (stats.queries,) and values.dtype == np.int64, name
        assert (values >= 0).all(), name
    assert per.postings_probed.sum() == stats.postings_probed
    assert per.candidates_scored.sum() == stats.candidates_scored
    assert per.reranked.sum() == stats.reranked
    # a posting or vector several queries share is read once but counted for each of them
    assert per.bytes_read.sum() >= stats.bytes_read


def test_per_query_figures_sum_to_the_totals(
    built_small: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    _, queries = small
    with anns.Collection.open(built_small) as coll:
        for params in (SearchParams(max_postings=4, eps2=0.0), SearchParams(),
                       exhaustive(600, 10)):
            stats = coll.search(queries, 10, params, return_stats=True).stats
            assert stats is not None
            assert_per_query_sums_to_totals(stats)
            assert (stats.per_query.postings_probed >= 1).all()
            assert (stats.per_query.postings_probed <= params.max_postings).all()


def test_a_query_probing_more_postings_reports_more(
    built_small: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    _, queries = small
    with anns.Collection.open(built_small) as coll:
        postings = coll.info()["postings"]
        narrow = coll.search(queries, 10, max_postings=1, eps2=0.0, return_stats=True).stats
        wide = coll.search(queries, 10, exhaustive(600, 10), return_stats=True).stats
    assert narrow is not None and wide is not None
    assert (narrow.per_query.postings_probed == 1).all()
    assert (wide.per_query.postings_probed == postings).all()
    assert (wide.per_query.candidates_scored >= 600).all(), "every entry, replicas included"
    assert (wide.per_query.reranked == 600).all()
    for name in ("candidates_scored", "bytes_read", "reranked"):
        assert (getattr(wide.per_query, name) > getattr(narrow.per_query, name)).all(), name


@pytest.mark.parametrize("fetch_budget_mb", [1024.0, 0.002, 1e-9])
def test_per_query_figures_land_on_their_rows_whatever_the_chunks(
    built_small: Path, small: tuple[np.ndarray, np.ndarray], fetch_budget_mb: float
) -> None:
    # chunks group queries by their nearest posting, not in row order: each row must still
    # carry the figures of its own query, the same as that query searched alone
    _, queries = small
    want = anns.SearchStats()
    with anns.Collection.open(built_small) as coll:
        stats = coll.search(queries, 10, fetch_budget_mb=fetch_budget_mb,
                            return_stats=True).stats
        whole = coll.search(queries, 10, return_stats=True).stats
        for query in queries:
            one = coll.search(query, 10, return_stats=True).stats
            assert one is not None
            want = want + one
    assert stats is not None and whole is not None
    assert_per_query_sums_to_totals(stats)
    assert stats.per_query == want.per_query
    assert stats.postings_probed == want.postings_probed
    if fetch_budget_mb < 1:
        # several chunks: postings shared across them are read again
        assert stats.postings_fetched > whole.postings_fetched
    if fetch_budget_mb == 1e-9:  # one query per chunk: nothing is shared, bytes add up
        assert stats.per_query.bytes_read.sum() == stats.bytes_read


def test_adding_stats_puts_the_queries_of_the_left_first() -> None:
    def stats(probed: list[int], fetched: int, seconds: float) -> anns.SearchStats:
        per = np.array(probed, dtype=np.int64)
        return anns.SearchStats(
            queries=len(probed), postings_probed=int(per.sum()), postings_fetched=fetched,
            bytes_read=int(100 * per.sum()), candidates_scored=int(10 * per.sum()),
            reranked=5 * len(probed), seconds={"scan": seconds},
            per_query=anns.QueryStats(per, 10 * per, 100 * per, np.full(len(per), 5)),
        )

    left, right = stats([1, 2], 3, 0.5), stats([7], 2, 0.25)
    both = left + right
    assert (both.queries, both.postings_probed, both.postings_fetched) == (3, 10, 5)
    assert both.seconds == {"scan": 0.75}
    assert both.per_query == anns.QueryStats(
        np.array([1, 2, 7]), np.array([10, 20, 70]), np.array([100, 200, 700]),
        np.array([5, 5, 5]))
    assert (anns.SearchStats() + left).per_query == left.per_query
    assert both.per_query != left.per_query

# --------------------------------------------------------------------- bad knobs
@pytest.mark.parametrize(
    ("knobs", "named"),
    [
        ({"max_postings": 0}, "max_postings"),
        ({"eps2": -0.1}, "eps2"),
        ({"refine_factor": 0.5}, "refine_factor"),
        ({"fetch_budget_mb": 0}, "fetch_budget_mb"),
        ({"nprobe": 3}, "nprobe"),
    ],
)
def test_bad_search_knobs_name_the_field(
    built_small: Path, small: tuple[np.ndarray, np.ndarray], knobs: dict, named: str
) -> None:
    with anns.Collection.open(built_small) as coll:
        with pytest.raises(InvalidArgumentError, match=f"invalid SearchParams: {named}"):
            coll.search(small[1], 10, **knobs)


@pytest.mark.parametrize("k", [10, 50, 100])
def test_probing_everything_returns_k_results_even_with_many_replicas(
    tmp_path: Path, k: int
) -> None:
    # wide closure: most vectors sit in several postings, so the scan sees each id many times;
    # a collection of 100 vectors searched over every posting has k results for k <= 100
    base = S.gaussian(0, 100, 4)
    summary = anns.build(
        tmp_path / "c", base,
        config={"posting_size": 4, "max_posting_size": 64, "eps1": 10.0, "replica_cap": 8},
    )
    assert summary.mean_replicas > 2
    with anns.Collection.open(tmp_path / "c") as coll:
        result = coll.search(base[:5], k, max_postings=100_000, eps2=100.0, refine_factor=1.0)
    assert (result.ids >= 0).all(), f"results per query: {(result.ids >= 0).sum(axis=1)}"


def test_knobs_override_params(built_small: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    with anns.Collection.open(built_small) as coll:
        stats = coll.search(
            small[1], 10, SearchParams(max_postings=2, eps2=100.0), eps2=0.0, return_stats=True
        ).stats
    assert stats is not None and stats.postings_probed == len(small[1])


# ------------------------------------------------------------------------- internals
@given(
    hnp.arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(0, 30)),
               elements=st.integers(-1, 12)),
    st.integers(1, 20),
)
def test_first_unique_keeps_first_occurrences_in_order(cand: np.ndarray, depth: int) -> None:
    out = _first_unique(cand, depth)
    assert out.shape == (len(cand), depth)
    for row, got in zip(cand, out):
        want: list[int] = []
        for v in row.tolist():
            if v >= 0 and v not in want:
                want.append(v)
        want = want[:depth]
        assert got.tolist() == want + [-1] * (depth - len(want))


@pytest.mark.parametrize("replica_cap", [3, 8])
@given(data=st.data(), depth=st.integers(1, 12))
def test_the_scan_pool_finds_what_room_for_every_copy_finds(
    data: st.DataObject, depth: int, replica_cap: int
) -> None:
    """Making room for SCAN_COPIES copies of a vector (then again, with room for all, for the
    queries left short) yields the same candidates as room for every copy from the start.
    At replica_cap 8 every id is in every list: more copies than the pool has room for."""
    n_ids, n_lists, q = 30, 8, 3
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    vectors = rng.standard_normal((n_ids, 4)).astype(np.float32)
    lists = []
    for _ in range(n_lists):  # each id in up to replica_cap lists: heavy replication
        ids = np.flatnonzero(rng.random(n_ids) < min(1.0, replica_cap / n_lists))
        lists.append((ids.astype(np.int64), np.ascontiguousarray(vectors[ids]).view(np.uint8)))
    assign = np.stack([rng.permutation(n_lists) for _ in range(q)]).astype(np.int64)
    assign[:, data.draw(st.integers(1, n_lists)):] = -1
    entries = np.array([sum(len(lists[j][0]) for j in row if j >= 0) for row in assign])
    view = SimpleNamespace(codec=FlatCodec(4, "l2"), replica_cap=replica_cap)
    queries = rng.standard_normal((q, 4)).astype(np.float32)

    got = _scan(view, queries, lists, assign, entries, depth)  # type: ignore[arg-type]
    copies = min(replica_cap, assign.shape[1])
    _, everything = view.codec.scan(queries, lists, assign, max(1, min(
        depth * copies, int(entries.max()))))
    # rows no wider than the most entries a query's lists hold
    width = max(1, min(depth, int(entries.max())))
    np.testing.assert_array_equal(got, _first_unique(everything, width))
    assert SCAN_COPIES < 8  # else replica_cap never exceeds it and nothing here is tested


def test_exhaustive_search_of_a_query_on_a_centroid_still_sees_every_posting(
    tmp_path: Path,
) -> None:
    # posting_size 1: every vector is its own centroid, so a query equal to a stored vector
    # sits at distance 0 from its nearest centroid; pruning relative to that distance must
    # not hide the other postings when the settings ask for everything.
    base = S.gaussian(0, 3, 4)
    anns.build(tmp_path / "c", base, config={"posting_size": 1, "max_posting_size": 1})
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.info()["postings"] == 3
        result = coll.search(base[0], 3, exhaustive(3, 3))
    assert_matches_brute_force(result, base, np.arange(3), base[:1], 3, "l2", exact_ids=True)
