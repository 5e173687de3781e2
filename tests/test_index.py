"""Collection: lifecycle, the write path (add / upsert / delete), reads, concurrency, bad input.

Every bad-input test also checks that nothing stored was lost: the count and a search are the
same afterwards as before.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import anns
import strategies as S
from anns import (
    MAX_K,
    CollectionClosedError,
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptCollectionError,
    DimensionMismatchError,
    DTypeError,
    DuplicateIdsError,
    EmptyCollectionError,
    FailedPreconditionError,
    FormatVersionError,
    IdExistsError,
    IncompleteBuildError,
    IndexConfig,
    InvalidArgumentError,
    LimitExceededError,
    NonFiniteError,
    NotFoundError,
    StorageConfig,
)
from anns.evaluation import clustered_data, exact_knn, recall_at
from anns.storage import Storage
from invariants import (
    assert_matches_brute_force,
    assert_same_vectors,
    check_layout,
    exhaustive,
    read_layout,
)

MARKER = "ANNS_COLLECTION"


def _layout(coll: anns.Collection, ids: np.ndarray):  # type: ignore[no-untyped-def]
    return read_layout(coll._storage, ids)  # the open collection's own database handle


class Snapshot:
    """What a collection answers before a call that must change nothing."""

    def __init__(self, coll: anns.Collection, queries: np.ndarray) -> None:
        self.coll, self.queries = coll, queries
        self.count = coll.count()
        self.result = coll.search(queries, 10)

    def assert_unchanged(self) -> None:
        assert self.coll.count() == self.count
        again = self.coll.search(self.queries, 10)
        np.testing.assert_array_equal(again.ids, self.result.ids)
        np.testing.assert_array_equal(again.distances, self.result.distances)


@pytest.fixture
def before(coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]) -> Snapshot:
    return Snapshot(coll, small[1])


# --------------------------------------------------------------------------- lifecycle
def test_create_add_search(tmp_path: Path) -> None:
    base = S.gaussian(1, 300, 8)
    with anns.Collection.create(tmp_path / "c", IndexConfig(dim=8, posting_size=16)) as coll:
        assert coll.count() == 0 and len(coll) == 0
        ids = coll.add(base)
        np.testing.assert_array_equal(ids, np.arange(300))
        assert coll.count() == 300
        result = coll.search(base[:10], 1)
        np.testing.assert_array_equal(result.ids[:, 0], np.arange(10))
        result = coll.search(base[:10], 10, exhaustive(300, 10))
    assert_matches_brute_force(result, base, np.arange(300), base[:10], 10, "l2", exact_ids=True)


def test_close_and_reopen_give_identical_results(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    anns.build(tmp_path / "c", base, config={"posting_size": 16})
    coll = anns.Collection.open(tmp_path / "c")
    coll.add(S.gaussian(5, 50, 8), np.arange(1000, 1050))
    coll.delete(np.arange(0, 600, 3))
    first = coll.search(queries, 10)
    first_info = coll.info()
    coll.close()
    # the closed object is still referenced: close() alone must release the database
    with anns.Collection.open(tmp_path / "c") as again:
        second = again.search(queries, 10)
        second_info = again.info()
    np.testing.assert_array_equal(first.ids, second.ids)
    np.testing.assert_array_equal(first.distances, second.distances)
    for key in ("count", "postings", "config", "code_size"):
        assert first_info[key] == second_info[key]


def test_reopen_after_close_in_a_loop(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    anns.build(tmp_path / "c", small[0][:100])
    handles = []
    for _ in range(3):
        coll = anns.Collection.open(tmp_path / "c")
        handles.append(coll)
        assert coll.count() == 100
        coll.close()


def test_create_refuses_an_existing_collection(coll: anns.Collection) -> None:
    with pytest.raises(CollectionExistsError, match="already exists"):
        anns.Collection.create(coll.path, IndexConfig(dim=8))
    assert coll.count() == 600


def test_use_after_close(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    anns.build(tmp_path / "c", small[0][:50])
    coll = anns.Collection.open(tmp_path / "c")
    coll.close()
    coll.close()  # idempotent
    for call in (
        lambda: coll.search(small[1], 3),
        lambda: coll.add(small[0][:1], [999]),
        lambda: coll.delete([1]),
        lambda: coll.get([1]),
        lambda: coll.contains([1]),
        coll.count,
        coll.info,
    ):
        with pytest.raises(CollectionClosedError, match="is closed"):
            call()


def test_a_close_waits_for_the_search_in_flight_then_refuses_new_ones(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close never pulls the database from under a search in flight: the search answers in
    full, the close lands after it, and later searches raise CollectionClosedError."""
    anns.build(tmp_path / "c", small[0], config={"posting_size": 32})
    coll = anns.Collection.open(tmp_path / "c")
    reading, resume = threading.Event(), threading.Event()
    fetch = coll._storage.get_vectors

    def slow_fetch(ids: np.ndarray) -> list[bytes | None]:
        reading.set()  # the search holds its read of the collection here
        assert resume.wait(10)
        return fetch(ids)

    monkeypatch.setattr(coll._storage, "get_vectors", slow_fetch)
    with ThreadPoolExecutor(2) as pool:
        search = pool.submit(coll.search, small[1], 5, max_postings=8)
        assert reading.wait(10)
        close = pool.submit(coll.close)
        assert not close.done()  # (give it a moment: it must be waiting for the search)
        try:
            close.result(timeout=0.3)
        except concurrent.futures.TimeoutError:
            pass
        assert not close.done()
        resume.set()
        result = search.result(timeout=10)
        close.result(timeout=10)
    assert result.ids.shape == (len(small[1]), 5) and (result.ids[:, 0] >= 0).all()
    with pytest.raises(CollectionClosedError):
        coll.search(small[1], 5)
    anns.Collection.open(tmp_path / "c").close()  # and the database was released


def test_read_only_collection_refuses_writes(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    anns.build(tmp_path / "c", small[0][:50])
    with anns.Collection.open(tmp_path / "c", StorageConfig(read_only=True)) as coll:
        for call in (lambda: coll.add(small[0][:1], [999]), lambda: coll.delete([1]),
                     lambda: coll.upsert(small[0][:1], [1])):
            with pytest.raises(FailedPreconditionError, match="read-only"):
                call()
        assert coll.count() == 50 and coll.search(small[0][:1], 1).ids[0, 0] == 0


def test_info(coll: anns.Collection) -> None:
    info = coll.info()
    json.dumps(info)  # JSON-ready
    assert info["count"] == 600 and info["path"] == str(coll.path)
    assert info["config"]["dim"] == 8 and info["config"]["posting_size"] == 16
    assert info["postings"] >= 600 // 16
    assert info["centroid_bytes"] == info["postings"] * 8 * 4
    assert info["code_size"] == 8 and info["disk_bytes"] > 0
    assert info["build"]["n"] == 600
    memory = info["memory"]
    assert set(memory) == {"router", "codec", "basis", "block_cache", "table_readers",
                           "memtables"}
    assert memory["router"] == info["centroid_bytes"]  # a flat router over all dims
    assert memory["basis"] >= 8 * 8 * 4 and memory["codec"] >= 0
    assert 0 <= memory["block_cache"] <= anns.StorageConfig().block_cache_bytes


def test_info_of_an_empty_collection(tmp_path: Path) -> None:
    with anns.Collection.create(tmp_path / "c", IndexConfig(dim=4)) as coll:
        info = coll.info()
    json.dumps(info)
    assert info["count"] == 0 and info["postings"] == 0 and info["build"] is None
    assert info["memory"]["router"] == info["memory"]["basis"] == 0


# ------------------------------------------------------------------- add / get / contains
def test_add_after_build_is_found(coll: anns.Collection) -> None:
    new = S.gaussian(99, 5, 8) * 0.1 + 3.0  # away from the bulk of the data
    ids = coll.add(new)
    np.testing.assert_array_equal(ids, np.arange(600, 605))  # continue after the largest id
    assert coll.count() == 605
    result = coll.search(new, 1)
    np.testing.assert_array_equal(result.ids[:, 0], ids)
    np.testing.assert_allclose(result.distances[:, 0], 0.0, atol=1e-6)
    assert_same_vectors(coll.get(ids), new)
    assert coll.contains(ids).all()


def test_add_with_explicit_ids(coll: anns.Collection) -> None:
    big = np.array([2**62, 10**12, 7_000], dtype=np.int64)
    x = S.gaussian(3, 3, 8)
    np.testing.assert_array_equal(coll.add(x, big), big)
    assert_same_vectors(coll.get(big[::-1]), x[::-1])
    # default ids continue after the largest id ever assigned
    np.testing.assert_array_equal(coll.add(S.gaussian(4, 1, 8)), [2**62 + 1])


def test_add_of_an_existing_id_raises_and_writes_nothing(
    coll: anns.Collection, before: Snapshot
) -> None:
    x = S.gaussian(8, 3, 8)
    with pytest.raises(IdExistsError, match=r"1 id\(s\) already stored \(5\); use upsert"):
        coll.add(x, [9000, 5, 9001])
    before.assert_unchanged()
    assert not coll.contains([9000, 9001]).any()
    assert_same_vectors(coll.get([5])[0], before.coll.get([5])[0])
    assert coll.add(S.gaussian(9, 1, 8)).tolist() == [600], "next_id did not move"


def test_add_empty_batch(coll: anns.Collection, before: Snapshot) -> None:
    assert coll.add(np.empty((0, 8), np.float32)).shape == (0,)
    before.assert_unchanged()


def test_get_and_contains(coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]) -> None:
    base, _ = small
    assert_same_vectors(coll.get([3, 1, 599]), base[[3, 1, 599]])
    assert coll.get([]).shape == (0, 8)
    np.testing.assert_array_equal(coll.contains([0, 599, 600, 10**9]), [True, True, False, False])
    with pytest.raises(NotFoundError, match=r"1 id\(s\) not stored, e.g. \[600\]"):
        coll.get([1, 600])
    with pytest.raises(KeyError):  # NotFoundError is a KeyError
        coll.get([12345])


# ------------------------------------------------------------------------------ delete
def test_delete_hides_ids_also_across_reopen(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    anns.build(tmp_path / "c", base, config={"posting_size": 16})
    with anns.Collection.open(tmp_path / "c") as coll:
        nearest = coll.search(queries, 5, exhaustive(600, 5)).ids
        gone = np.unique(nearest[:, :2])
        assert coll.delete(gone) == len(gone)
        assert coll.count() == 600 - len(gone)
        assert not coll.contains(gone).any()
        after = coll.search(queries, 10)
        assert not np.isin(after.ids, gone).any()
        assert not np.isin(coll.search(base[gone], 3).ids, gone).any()
        with pytest.raises(NotFoundError):
            coll.get(gone[:1])
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.count() == 600 - len(gone)
        result = coll.search(queries, 10, exhaustive(600, 10))
        assert not np.isin(result.ids, gone).any()
        alive = np.setdiff1d(np.arange(600), gone)
        assert_matches_brute_force(result, base[alive], alive, queries, 10, "l2", exact_ids=True)
        check_layout(_layout(coll, np.arange(600)), alive, gone)


def test_delete_unknown_or_repeated(coll: anns.Collection, before: Snapshot) -> None:
    assert coll.delete([10**9, 601]) == 0
    before.assert_unchanged()
    assert coll.delete([7]) == 1
    assert coll.delete([7]) == 0
    assert coll.count() == 599


def test_deleted_id_can_be_added_again(coll: anns.Collection) -> None:
    new = S.gaussian(21, 1, 8) + 4.0
    coll.delete([42])
    coll.add(new, [42])
    assert coll.count() == 600 and coll.contains([42]).all()
    assert_same_vectors(coll.get([42]), new)
    assert coll.search(new, 1).ids[0, 0] == 42
    check_layout(_layout(coll, np.arange(600)), np.arange(600))


def test_delete_everything_then_search_finds_nothing(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    anns.build(tmp_path / "c", small[0][:40])
    with anns.Collection.open(tmp_path / "c") as coll:
        coll.delete(np.arange(40))
        result = coll.search(small[1], 5)
        assert (result.ids == -1).all() and (result.distances == np.inf).all()
        assert coll.count() == 0
        coll.add(small[0][:1], [7])
        result = coll.search(small[1], 5, exhaustive(1, 5))
        assert result.ids[:, 0].tolist() == [7] * len(small[1])
        assert (result.ids[:, 1:] == -1).all()


# ------------------------------------------------------------------------------ upsert
def test_upsert_replaces(coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]) -> None:
    base, queries = small
    moved = S.gaussian(31, 2, 8) * 0.1 + 5.0
    coll.upsert(moved, [10, 20])
    assert coll.count() == 600
    assert_same_vectors(coll.get([10, 20]), moved)
    np.testing.assert_array_equal(coll.search(moved, 1).ids[:, 0], [10, 20])
    # the old vectors are gone: searching at their place no longer finds ids 10 and 20 there
    at_old = coll.search(base[[10, 20]], 1)
    assert at_old.ids[0, 0] != 10 and at_old.ids[1, 0] != 20
    # upsert of new ids adds them
    coll.upsert(S.gaussian(32, 1, 8), [5000])
    assert coll.count() == 601 and coll.contains([5000]).all()
    everything = np.setdiff1d(np.arange(600), [10, 20])
    current = np.concatenate([base[everything], moved, coll.get([5000])])
    current_ids = np.concatenate([everything, [10, 20, 5000]])
    result = coll.search(queries, 10, exhaustive(601, 10))
    assert_matches_brute_force(result, current, current_ids, queries, 10, "l2", exact_ids=True)
    check_layout(_layout(coll, np.concatenate([np.arange(600), [5000]])), current_ids)


def test_upsert_needs_ids(coll: anns.Collection, before: Snapshot) -> None:
    with pytest.raises(anns.InvalidArgumentError, match="upsert needs explicit ids"):
        coll.upsert(S.gaussian(0, 1, 8), None)  # type: ignore[arg-type]
    before.assert_unchanged()


# ---------------------------------------------------------------------- posting splits
def test_many_adds_into_a_small_collection_split_postings(tmp_path: Path) -> None:
    base, queries = clustered_data(1500, 16, queries=50, seed=3)
    config = IndexConfig(dim=16, posting_size=8, max_posting_size=24)
    with anns.Collection.create(tmp_path / "c", config) as coll:
        coll.add(base[:100])  # trains routing on 100 vectors: ~13 postings
        postings_at_start = coll.info()["postings"]
        for s in range(100, 1500, 100):
            coll.add(base[s : s + 100])
        assert coll.count() == 1500
        assert coll.info()["postings"] > 2 * postings_at_start, "postings were split"
        check_layout(_layout(coll, np.arange(1500)), np.arange(1500))
        result = coll.search(queries, 10)
        truth, _ = exact_knn(base, queries, 10)
        assert recall_at(result.ids, truth, 10) >= 0.9
        everything = coll.search(queries, 10, exhaustive(1500, 10))
        assert_matches_brute_force(everything, base, np.arange(1500), queries, 10, "l2",
                                   exact_ids=True)
    with anns.Collection.open(tmp_path / "c") as coll:  # splits are durable
        np.testing.assert_array_equal(coll.search(queries, 10).ids, result.ids)


def test_adds_into_a_built_collection_keep_postings_bounded(
    coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    extra = S.gaussian(77, 400, 8)
    for s in range(0, 400, 40):
        coll.add(extra[s : s + 40])
    ids = np.arange(1000)
    check_layout(_layout(coll, ids), ids)
    everything = np.concatenate([base, extra])
    result = coll.search(queries, 10)
    truth, _ = exact_knn(everything, queries, 10)
    assert recall_at(result.ids, truth, 10) >= 0.9
    # records must still name every posting a vector is in, or a delete leaves ghosts behind
    gone = np.arange(0, 1000, 2)
    coll.delete(gone)
    check_layout(_layout(coll, ids), np.arange(1, 1000, 2), gone)


# ------------------------------------------------------------------------- concurrency
def test_concurrent_searches_equal_sequential(
    coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    batches = [queries] + [base[s : s + 7] for s in range(0, 140, 7)]
    sequential = [coll.search(b, 10) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda b: coll.search(b, 10), batches * 3))
    for i, got in enumerate(concurrent):
        want = sequential[i % len(batches)]
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.distances, want.distances)


def test_concurrent_searches_while_another_thread_adds(
    coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]
) -> None:
    # the added vectors lie far from every query, so they never enter a top 10: each search,
    # whatever write it overlaps, must return exactly what it returned before the writes
    queries = small[1][:10]
    params = exhaustive(1200, 10)
    want = coll.search(queries, 10, params)
    far = S.gaussian(5, 600, 8) * 0.5 + 40.0
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for s in range(0, 600, 60):  # each add splits postings
                coll.add(far[s : s + 60], np.arange(10_000 + s, 10_000 + s + 60))
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)
        finally:
            stop.set()

    def reader(_: int) -> int:
        done = 0
        while not stop.is_set() or done == 0:
            got = coll.search(queries, 10, params)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.distances, want.distances)
            done += 1
        return done

    thread = threading.Thread(target=writer)
    thread.start()
    with ThreadPoolExecutor(2) as pool:
        searches = sum(pool.map(reader, range(2)))
    thread.join()
    assert not failures, failures
    assert searches >= 2
    assert coll.count() == 1200
    # settings for k = 1: the far vectors' codes saturate the trained sq8 range and tie in
    # the scan, so the rerank must be deep enough to hold all 600 of them
    exact1 = exhaustive(1200, 1)
    assert coll.search(far[:5], 1, exact1).ids[:, 0].tolist() == list(range(10_000, 10_005))
    ids = np.concatenate([np.arange(600), np.arange(10_000, 10_600)])
    check_layout(_layout(coll, ids), ids)


def test_a_search_overlapping_a_split_sees_one_state(
    coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]
) -> None:
    # Deterministic version of the race above: the search is held between routing and reading
    # postings while an add splits the posting it needs. The add may wait for the search or
    # land meanwhile; either way the search answers as before the add or as after it, never
    # from one state's router and the other's postings.
    base, _ = small
    query = base[:1]
    params = exhaustive(640, 10)
    before = coll.search(query, 10, params).ids
    near = base[0] + S.gaussian(9, 40, 8) * 1e-3  # all land in base[0]'s posting: it splits
    postings = coll.info()["postings"]

    storage = coll._storage
    real_get_postings = storage.get_postings
    searching, release = threading.Event(), threading.Event()

    def held_get_postings(pids: np.ndarray):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("searcher") and not release.is_set():
            searching.set()
            release.wait(30)
        return real_get_postings(pids)

    storage.get_postings = held_get_postings  # type: ignore[method-assign]
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="searcher") as searcher, \
                ThreadPoolExecutor(1, thread_name_prefix="writer") as writer:
            search = searcher.submit(coll.search, query, 10, params)
            assert searching.wait(30)
            add = writer.submit(coll.add, near, np.arange(7000, 7040))
            try:  # give the add time to land if nothing holds it back
                add.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                pass  # it waits for the search: fine
            release.set()
            overlapping = search.result(30).ids
            add.result(30)
    finally:
        release.set()
        storage.get_postings = real_get_postings  # type: ignore[method-assign]
    assert coll.info()["postings"] > postings, "the add split a posting"
    after = coll.search(query, 10, params).ids
    assert after[0, 0] == 0 and (after[0, 1:] >= 7000).all()
    assert (overlapping == before).all() or (overlapping == after).all(), (
        f"before {before}, after {after}, overlapping {overlapping}"
    )


def test_concurrent_writers_serialise(coll: anns.Collection) -> None:
    chunks = [(S.gaussian(100 + i, 10, 8), np.arange(20_000 + 10 * i, 20_010 + 10 * i))
              for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda c: coll.add(*c), chunks))
    assert coll.count() == 680
    for x, ids in chunks:
        assert_same_vectors(coll.get(ids), x)
    ids = np.concatenate([np.arange(600)] + [c[1] for c in chunks])
    check_layout(_layout(coll, ids), ids)


# ---------------------------------------------------------------------- bad input
def test_wrong_dimension(coll: anns.Collection, before: Snapshot) -> None:
    with pytest.raises(DimensionMismatchError, match="vector dim 7 does not match collection dim"):
        coll.add(np.ones((2, 7), np.float32))
    with pytest.raises(DimensionMismatchError, match="query dim 9 does not match collection dim 8"):
        coll.search(np.ones((2, 9), np.float32), 5)
    with pytest.raises(DimensionMismatchError, match="dim 7 does not match"):
        coll.upsert(np.ones((1, 7), np.float32), [1])
    before.assert_unchanged()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(coll: anns.Collection, before: Snapshot, bad: float) -> None:
    x = np.ones((3, 8), np.float32)
    x[2, 4] = bad
    with pytest.raises(NonFiniteError, match="NaN or Inf.*first at row 2"):
        coll.add(x, [7000, 7001, 7002])
    with pytest.raises(NonFiniteError, match="quer.*NaN or Inf"):
        coll.search(x, 5)
    with pytest.raises(NonFiniteError):
        coll.upsert(x, [1, 2, 3])
    before.assert_unchanged()
    assert not coll.contains([7000, 7001]).any()


@pytest.mark.parametrize(
    "vectors",
    [np.array([["a"] * 8]), np.ones((1, 8), np.complex64), np.ones((1, 8), bool)],
    ids=["strings", "complex", "bool"],
)
def test_wrong_vector_dtype(coll: anns.Collection, before: Snapshot, vectors: np.ndarray) -> None:
    with pytest.raises(DTypeError, match=f"got dtype {vectors.dtype}"):
        coll.add(vectors, [7000])
    with pytest.raises(DTypeError, match=f"got dtype {vectors.dtype}"):
        coll.search(vectors, 3)
    before.assert_unchanged()


def test_float_ids(coll: anns.Collection, before: Snapshot) -> None:
    with pytest.raises(DTypeError, match="ids must be an integer array, got dtype float64"):
        coll.add(np.ones((2, 8), np.float32), [1.0, 2.0])
    with pytest.raises(DTypeError, match="ids must be an integer array"):
        coll.delete(np.array([3.0]))
    with pytest.raises(DTypeError):
        coll.get(["a"])
    before.assert_unchanged()


def test_negative_ids(coll: anns.Collection, before: Snapshot) -> None:
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        coll.add(np.ones((1, 8), np.float32), [-1])
    before.assert_unchanged()


def test_ids_count_must_match(coll: anns.Collection, before: Snapshot) -> None:
    with pytest.raises(InvalidArgumentError, match="got 1 ids for 2 vectors"):
        coll.add(np.ones((2, 8), np.float32), [9000])
    before.assert_unchanged()


@pytest.mark.parametrize("k", [0, -3])
def test_non_positive_k(coll: anns.Collection, before: Snapshot, k: int) -> None:
    with pytest.raises(InvalidArgumentError, match=f"k must be positive, got {k}"):
        coll.search(before.queries, k)
    before.assert_unchanged()


def test_k_beyond_max_k(coll: anns.Collection, before: Snapshot) -> None:
    with pytest.raises(LimitExceededError, match=f"k {MAX_K + 1} exceeds the limit of {MAX_K}"):
        coll.search(before.queries, MAX_K + 1)
    before.assert_unchanged()


def test_search_on_an_empty_collection(tmp_path: Path) -> None:
    with anns.Collection.create(tmp_path / "c", IndexConfig(dim=4)) as coll:
        with pytest.raises(EmptyCollectionError, match="empty"):
            coll.search(np.ones((1, 4), np.float32), 3)
        assert coll.count() == 0
        assert coll.delete([1]) == 0
        assert not coll.contains([0]).any()
    with anns.Collection.open(tmp_path / "c") as coll:  # also after reopen
        with pytest.raises(EmptyCollectionError):
            coll.search(np.ones((1, 4), np.float32), 3)


def test_duplicate_ids_in_one_batch(coll: anns.Collection, before: Snapshot) -> None:
    with pytest.raises(DuplicateIdsError, match="duplicate ids in one batch: 9000"):
        coll.add(np.ones((3, 8), np.float32), [9000, 1234, 9000])
    with pytest.raises(DuplicateIdsError, match="duplicate ids in one batch: 3"):
        coll.upsert(np.ones((2, 8), np.float32), [3, 3])
    before.assert_unchanged()
    assert not coll.contains([9000, 1234]).any()


def test_missing_collection_dir(tmp_path: Path) -> None:
    with pytest.raises(CollectionNotFoundError, match="directory does not exist"):
        anns.Collection.open(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_directory_that_is_not_a_collection(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(CollectionNotFoundError, match=f"{MARKER} file is missing"):
        anns.Collection.open(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"\xff\xd8"


def _closed_built(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> Path:
    anns.build(tmp_path / "c", small[0][:100])
    return tmp_path / "c"


def _assert_intact(path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    with anns.Collection.open(path) as coll:
        assert coll.count() == 100
        assert coll.search(small[0][:3], 1).ids[:, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("garbage", ["garbage\x00", '{"format_version": null}'])
def test_corrupt_marker(tmp_path: Path, small: tuple[np.ndarray, np.ndarray], garbage: str) -> None:
    path = _closed_built(tmp_path, small)
    good = (path / MARKER).read_text()
    (path / MARKER).write_text(garbage)
    with pytest.raises(CorruptCollectionError, match=f"{MARKER} is unreadable"):
        anns.Collection.open(path)
    (path / MARKER).write_text(good)
    _assert_intact(path, small)


def test_corrupt_database(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    path = _closed_built(tmp_path, small)
    for f in path.iterdir():
        if f.name.startswith("CURRENT"):
            f.write_text("MANIFEST-999999\n")
    with pytest.raises(CorruptCollectionError, match="cannot open the database"):
        anns.Collection.open(path)


def test_unknown_format_version(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    path = _closed_built(tmp_path, small)
    good = (path / MARKER).read_text()
    marker = json.loads(good)
    marker["format_version"] = marker["format_version"] + 1
    (path / MARKER).write_text(json.dumps(marker))
    with pytest.raises(FormatVersionError, match=f"format version {marker['format_version']}"):
        anns.Collection.open(path)
    (path / MARKER).write_text(good)
    _assert_intact(path, small)


def test_interrupted_build_state(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    path = _closed_built(tmp_path, small)
    store = Storage.open(path, StorageConfig())
    batch = store.batch()
    batch.put_meta("state", b"building")
    store.write(batch)
    store.close()
    del store
    with pytest.raises(IncompleteBuildError, match="did not finish.*delete the directory"):
        anns.Collection.open(path)
    with pytest.raises(CorruptCollectionError):  # IncompleteBuildError is a corruption
        anns.Collection.open(path)


def test_collection_without_config_is_corrupt(tmp_path: Path) -> None:
    Storage.create(tmp_path / "c", StorageConfig()).close()
    with pytest.raises(CorruptCollectionError, match="no configuration"):
        anns.Collection.open(tmp_path / "c")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 8, "metric": "hamming"}, "metric"),
        ({"dim": 8, "posting_size": 64, "max_posting_size": 32}, "max_posting_size 32"),
        ({"dim": 8, "replica_cap": 0}, "replica_cap"),
        ({"dim": 8, "eps1": -1}, "eps1"),
        ({"dim": 8, "codec": "pq"}, "codec"),
        ({"dim": 8, "colour": "blue"}, "colour"),
    ],
)
def test_wrong_config_fields(tmp_path: Path, fields: dict, named: str) -> None:
    from anns.config import validated

    with pytest.raises(InvalidArgumentError, match=f"invalid IndexConfig: .*{named}"):
        validated(IndexConfig, **fields)
    with pytest.raises(InvalidArgumentError, match=named):
        anns.build(tmp_path / "c", np.ones((10, 8), np.float32), config=fields)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("call", ["get", "contains", "count", "info"])
def test_a_read_overlapping_close_finishes_before_the_database_closes(
    tmp_path: Path, call: str
) -> None:
    coll = anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=8))
    coll.add(S.gaussian(0, 50, 8), np.arange(50))
    storage = coll._storage
    name = "get_vectors" if call in ("get", "contains") else "get_meta"
    real = getattr(storage, name)
    reading, release = threading.Event(), threading.Event()

    def held(*args: object) -> object:
        if threading.current_thread().name.startswith("reader") and not release.is_set():
            reading.set()
            release.wait(30)
        return real(*args)

    setattr(storage, name, held)
    args = (np.arange(5),) if call in ("get", "contains") else ()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader, \
                ThreadPoolExecutor(1) as closer:
            read = reader.submit(getattr(coll, call), *args)
            assert reading.wait(30)
            closing = closer.submit(coll.close)
            with pytest.raises(concurrent.futures.TimeoutError):
                closing.result(timeout=0.3)  # the close waits for the read
            release.set()
            got = read.result(30)  # answered from the open database
            closing.result(30)
    finally:
        release.set()
    assert got is not None and (call != "count" or got == 50)
    with pytest.raises(CollectionClosedError):
        getattr(coll, call)(*args)


def test_a_model_change_between_checking_and_searching_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_compat import two_models

    old, new, _ = two_models(1000, seed=1)
    coll = anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=32))
    coll.add(old[:900], np.arange(900))
    coll.add_model("v2", old[:600], new[:600])  # current: 48 dims
    real = anns.index.as_vectors

    def then_switch(*args: object, **kwargs: object) -> np.ndarray:
        checked = real(*args, **kwargs)
        if coll.models()["current"] == "v2":
            coll.set_current("default")  # lands before the search takes its view
        return checked

    monkeypatch.setattr(anns.index, "as_vectors", then_switch)
    with pytest.raises(anns.DimensionMismatchError, match="query dim 48 does not match "
                                                          "collection dim 32"):
        coll.search(new[900:910], 10)
    coll.close()


def test_search_takes_an_empty_batch_and_params_as_a_dict(
    coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]
) -> None:
    got = coll.search(np.empty((0, 8), np.float32), 5, return_stats=True)
    assert got.ids.shape == (0, 5) and got.distances.shape == (0, 5)
    assert got.stats is not None and got.stats.queries == 0
    _, queries = small
    as_dict = coll.search(queries[:3], 5, {"max_postings": 4, "refine_factor": 2.0})
    as_model = coll.search(queries[:3], 5, anns.SearchParams(max_postings=4, refine_factor=2.0))
    np.testing.assert_array_equal(as_dict.ids, as_model.ids)
    with pytest.raises(anns.DTypeError, match="params must be SearchParams"):
        coll.search(queries[:3], 5, [4, 2.0])  # type: ignore[arg-type]
    with pytest.raises(anns.InvalidArgumentError, match="max_postings"):
        coll.search(queries[:3], 5, {"max_postings": 0})


def test_a_deep_rerank_of_a_small_collection_sizes_its_rows_by_what_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coll = anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=8))
    coll.add(S.gaussian(0, 300, 8), np.arange(300))
    widths: list[int] = []
    real = anns.search._rerank

    def recording(view: object, queries: object, cand: np.ndarray, *args: object) -> object:
        widths.append(cand.shape[1])
        return real(view, queries, cand, *args)

    monkeypatch.setattr(anns.search, "_rerank", recording)
    got = coll.search(S.gaussian(1, 16, 8), 1024, refine_factor=1000.0, max_postings=1000,
                      eps2=float("inf"))
    assert got.ids.shape == (16, 1024) and (got.ids[:, 300:] == -1).all()
    assert (np.sort(got.ids[:, :300], axis=1) == np.arange(300)).all()
    assert widths and max(widths) <= 300 * 8  # never the 1,024,000 asked for
    coll.close()


def test_ids_assigned_past_the_largest_int64_are_refused_and_empty_lists_are_empty_batches(
    tmp_path: Path,
) -> None:
    coll = anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=8))
    top = np.iinfo(np.int64).max
    coll.add(S.gaussian(0, 2, 8), [top - 1, top])
    with pytest.raises(LimitExceededError, match="give ids"):
        coll.add(S.gaussian(1, 1, 8))
    assert coll.add([]).shape == (0,) and coll.count() == 2
    assert coll.search([], 3).ids.shape == (0, 3)
    coll.close()


# ---------------------------------------------------------------------------- retraining
def test_a_collection_filled_a_vector_at_a_time_retrains_as_it_grows(tmp_path: Path) -> None:
    # trained on its first vector alone, an sq8 codec gives every later vector the same
    # code: recall@10 was 0.004; retrained at each doubling it ranks like a bulk build
    x = S.gaussian(0, 2000, 16)
    queries = S.gaussian(1, 50, 16)
    truth = exact_knn(x, queries, 10)[0]
    anns.build(tmp_path / "bulk", x)
    with anns.Collection.open(tmp_path / "bulk") as built:
        bulk_recall = recall_at(built.search(queries, 10).ids, truth, 10)
    coll = anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=16))
    trained = []
    for i in range(2000):
        coll.add(x[i : i + 1], [i])
        trained.append(int(coll._storage.get_meta("trained_rows")))
    assert sorted(set(trained)) == [2 ** p for p in range(11)]  # 1, 2, 4, ..., 1024
    assert recall_at(coll.search(queries, 10).ids, truth, 10) >= bulk_recall - 0.1
    check_layout(_layout(coll, np.arange(2000)), np.arange(2000))
    coll.close()


def test_retrain_keeps_every_vector_and_deletion_and_refuses_mixed_versions(
    coll: anns.Collection, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    coll.delete(np.arange(10))
    coll.tune(0.8, queries=50)
    assert coll.retrain() == 590
    assert coll.count() == 590 and coll.profiles() == {}
    assert not coll.contains(np.arange(10)).any()
    np.testing.assert_allclose(coll.get(np.arange(10, 600)), base[10:], atol=1e-5)
    alive = np.arange(10, 600)
    check_layout(_layout(coll, np.arange(600)), alive, np.arange(10))
    assert_matches_brute_force(coll.search(queries, 10, exhaustive(590, 10)), base[10:], alive,
                               queries, 10, "l2", exact_ids=True)
    coll.add_model("turned", base[:300], base[:300] @ np.eye(8, dtype=np.float32)[::-1],
                   force=True)
    with pytest.raises(FailedPreconditionError, match="rebase"):
        coll.retrain()


def test_a_batch_is_searched_a_slice_at_a_time_and_a_write_lands_between_slices(
    coll: anns.Collection, small: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, _ = small
    queries = base[:40] + 0.01
    whole = coll.search(queries, 5, return_stats=True)
    monkeypatch.setattr(anns.index, "SEARCH_SLICE", 4)
    sliced = coll.search(queries, 5, return_stats=True)
    np.testing.assert_array_equal(sliced.ids, whole.ids)
    np.testing.assert_allclose(sliced.distances, whole.distances, rtol=1e-5, atol=1e-6)
    assert sliced.stats is not None and whole.stats is not None
    assert sliced.stats.queries == 40
    np.testing.assert_array_equal(sliced.stats.per_query.bytes_read,
                                  whole.stats.per_query.bytes_read)

    real = anns.index.search
    slices: list[float] = []

    def slow(*args: object) -> object:  # each slice takes 50 ms: the batch about 0.5 s
        time.sleep(0.05)
        slices.append(time.monotonic())
        return real(*args)

    monkeypatch.setattr(anns.index, "search", slow)
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(coll.search, queries, 5)
        while not slices:
            time.sleep(0.005)
        coll.add(base[:1] + 5.0, [9000])  # waits for one slice at most
        added = time.monotonic()
        batch.result(30)
    assert added < slices[-1], "the add waited for the whole batch"
