"""Integer vector storage (``IndexConfig.vector_dtype`` uint8 / int8): vectors kept exactly as
given at one byte a dim, searched and returned exactly as a float32 twin of the same data
would, refused when they hold a value the type cannot, and carried through every path that
reads stored vectors (recode, tuning's truth, model versions, rebase, the wire)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anns
from anns.cli import main
from anns.config import validated
from anns.errors import InvalidArgumentError
from anns.evaluation import exact_knn
from anns.storage import Storage
from anns.tuning import _held_out
from anns.vectors import check_storable
from invariants import (
    assert_matches_brute_force,
    check_layout,
    check_replication,
    exhaustive,
    read_layout_at,
)
from test_compat import OLD_DIM, two_models

RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def integer_data(seed: int, n: int, dim: int, dtype: str) -> np.ndarray:
    """Clustered integer vectors in ``dtype``'s range (as float32), with a few dims carrying
    most of the spread so that a PCA basis is not the identity."""
    rng = np.random.default_rng(seed)
    lo, hi = RANGES[dtype]
    centres = rng.uniform(lo + 40, hi - 40, (8, dim)) * np.linspace(1.0, 0.3, dim)
    x = centres[rng.integers(0, 8, n)] + rng.normal(0, 12, (n, dim))
    return np.clip(np.rint(x), lo, hi).astype(np.float32)


def _twins(path: Path, x: np.ndarray, dtype: str, built: bool, **config: Any) -> tuple[
        anns.Collection, anns.Collection]:
    """A float32 and a ``dtype`` collection of the same vectors and config."""
    out = []
    for name in ("float32", dtype):
        fields = {"dim": x.shape[1], "posting_size": 32, **config, "vector_dtype": name}
        if built:
            anns.build(path / name, x, config=fields)
            out.append(anns.Collection.open(path / name))
        else:
            coll = anns.Collection.create(path / name, anns.IndexConfig(**fields))
            coll.add(x)
            out.append(coll)
    return out[0], out[1]


def assert_same_answer(a: anns.SearchResult, b: anns.SearchResult, atol: float = 1e-3) -> None:
    """Equal distances, and equal ids wherever a distance is not tied with a neighbour's
    (integer data ties often; either order of a tie is right)."""
    scale = 1.0 + float(np.abs(a.distances).max())
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-4, atol=atol * scale)
    gaps = np.abs(np.diff(a.distances, axis=1)) > 1e-4 * scale
    edge = np.ones((len(gaps), 1), dtype=bool)
    distinct = np.concatenate([edge, gaps], axis=1) & np.concatenate([gaps, edge], axis=1)
    np.testing.assert_array_equal(np.where(distinct, a.ids, -2), np.where(distinct, b.ids, -2))


# ------------------------------------------------------------------------ exact twins
@settings(max_examples=6, deadline=None)
@given(
    dtype=st.sampled_from(["uint8", "int8"]),
    metric=st.sampled_from(["l2", "ip"]),
    codec=st.sampled_from(["sq8", "opq"]),
    built=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_integer_vectors_search_like_their_float32_twin(
    tmp_path_factory: pytest.TempPathFactory, dtype: str, metric: str, codec: str, built: bool,
    seed: int,
) -> None:
    x = integer_data(seed, 400, 16, dtype)
    queries = np.random.default_rng(seed + 1).normal(0, 30, (12, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("twins")
    f32, ints = _twins(path, x, dtype, built, metric=metric, codec=codec, pq_m=4, d_scan=8)
    try:
        ids = np.arange(len(x))
        # exhaustive: exact, so both equal brute force; bounded: same candidates, same order
        for coll in (f32, ints):
            result = coll.search(queries, 10, exhaustive(len(x), 10))
            assert_matches_brute_force(result, x, ids, queries, 10, metric)
        assert_same_answer(f32.search(queries, 10, max_postings=3, refine_factor=2),
                           ints.search(queries, 10, max_postings=3, refine_factor=2))
        # returned exactly as given (the float32 twin only up to the basis's rounding)
        np.testing.assert_array_equal(ints.get(ids[::7]), x[::7])
    finally:
        f32.close()
        ints.close()
    layout = read_layout_at(path / dtype, np.arange(len(x)))
    check_layout(layout, np.arange(len(x)))
    check_replication(layout, np.arange(len(x)))


def test_vectors_take_one_byte_a_dim_and_the_rerank_reads_a_quarter(tmp_path: Path) -> None:
    x = integer_data(0, 600, 64, "uint8")
    f32, ints = _twins(tmp_path, x, "uint8", built=True, codec="opq", pq_m=8, d_scan=16)
    try:
        store = ints._storage
        assert {len(b) for b in store.get_vectors(np.arange(10))} == {64}
        params = {"max_postings": 4, "refine_factor": 3}
        a = f32.search(x[:20], 10, return_stats=True, **params).stats
        b = ints.search(x[:20], 10, return_stats=True, **params).stats
        assert a is not None and b is not None and a.reranked == b.reranked > 0
        # the same postings, and each distinct vector fetched at 64 bytes instead of 256
        saved = a.bytes_read - b.bytes_read
        assert saved > 0 and saved % (3 * 64) == 0 and saved // (3 * 64) <= a.reranked
        np.testing.assert_array_equal(b.per_query.bytes_read,
                                      a.per_query.bytes_read - 3 * 64 * a.per_query.reranked)
        assert ints.info()["config"]["vector_dtype"] == "uint8"
    finally:
        f32.close()
        ints.close()


def test_a_shorter_rerank_maps_the_vectors_it_reads(tmp_path: Path) -> None:
    x = integer_data(1, 500, 32, "uint8")
    f32, ints = _twins(tmp_path, x, "uint8", built=True)
    try:
        q = x[:15] + 0.25
        for d_rerank in (8, 31):
            assert_same_answer(f32.search(q, 10, max_postings=6, d_rerank=d_rerank),
                               ints.search(q, 10, max_postings=6, d_rerank=d_rerank))
    finally:
        f32.close()
        ints.close()


# ------------------------------------------------------------------------- refusals
def test_values_the_type_cannot_hold_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    x = integer_data(2, 300, 8, "uint8")
    coll = anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=8, vector_dtype="uint8"))
    with coll:
        coll.add(x, np.arange(300))
        before = coll.search(x[:5], 5, exhaustive(300, 5)).ids
        for bad, named in ((x[:3] + 0.5, "row 0, dim 0 holds"), (x[:3] * 0 + 256, "256.0"),
                           (x[:3] * 0 - 1, "-1.0")):
            with pytest.raises(InvalidArgumentError, match=r"stored as uint8 \(integers 0\.\.255\)"):
                coll.add(bad, np.arange(1000, 1003))
            with pytest.raises(InvalidArgumentError, match=named):
                coll.upsert(bad, np.arange(3))
        assert coll.count() == 300
        np.testing.assert_array_equal(coll.get(np.arange(3)), x[:3])
        np.testing.assert_array_equal(coll.search(x[:5], 5, exhaustive(300, 5)).ids, before)
        # queries are not stored: any floats will do
        coll.search(x[:2] + 0.5, 5)
    with pytest.raises(InvalidArgumentError, match="int8"):
        anns.build(tmp_path / "b", x, config={"vector_dtype": "int8"})  # 255 > 127
    late = x.copy()
    late[250, 3] = 300.0  # past the first chunk of a small build: named by its input row
    with pytest.raises(InvalidArgumentError, match="row 250, dim 3 holds 300.0"):
        anns.build(tmp_path / "late", late, config={"vector_dtype": "uint8"})
    with pytest.raises(anns.AnnsError):  # a failed build leaves no collection to open
        anns.Collection.open(tmp_path / "b")


def test_cosine_with_an_integer_type_is_a_config_error() -> None:
    with pytest.raises(InvalidArgumentError, match="cosine"):
        validated(anns.IndexConfig, dim=4, metric="cosine", vector_dtype="uint8")


def test_check_storable_names_the_first_bad_value() -> None:
    x = np.array([[1, 2], [3, 4.5]], dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match=r"row 1, dim 1 holds 4\.5 in 1 bad row"):
        check_storable(x, "int8")
    out = check_storable(np.array([[-128, 127]], np.float32), "int8")
    assert out.dtype == np.int8 and out.tolist() == [[-128, 127]]
    f = np.ones((1, 2), np.float32)
    assert check_storable(f, "float32") is f


# ---------------------------------------------------------- paths that read vectors
def test_recode_and_tuning_truth_read_integer_vectors_in_the_basis(tmp_path: Path) -> None:
    x = integer_data(3, 800, 24, "uint8")
    f32, ints = _twins(tmp_path, x, "uint8", built=True, codec="sq8", d_scan=12)
    try:
        for coll in (f32, ints):
            coll.recode(codec="opq", pq_m=6, d_scan=12)
        assert_same_answer(f32.search(x[:30] + 0.5, 10, max_postings=4, refine_factor=2),
                           ints.search(x[:30] + 0.5, 10, max_postings=4, refine_factor=2))
        qa, sa, ta = _held_out(f32, 40, 10, seed=0)
        qb, sb, tb = _held_out(ints, 40, 10, seed=0)
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_allclose(qa, qb, atol=1e-3)
        np.testing.assert_array_equal(ta, tb)
    finally:
        f32.close()
        ints.close()


def test_model_versions_and_rebase_on_an_integer_collection(tmp_path: Path) -> None:
    old, new, _ = two_models(1400, seed=9)
    # the old model's vectors quantised to int8, as an integer-quantised embedding would be
    scale = 127 / float(np.abs(old).max())
    old = np.rint(old * scale).astype(np.float32)
    n, pairs = 1200, 400
    f32, ints = _twins(tmp_path, old[:n], "int8", built=False, posting_size=64)
    try:
        for coll in (f32, ints):
            coll.add_model("v2", old[:pairs], new[:pairs], force=True)
            coll.backfill("v2", new[: n // 2], np.arange(n // 2), progress=False)
        q = new[n:]
        knobs = {"max_postings": 10000, "eps2": math.inf, "refine_factor": 100}
        for model in ("v2", "default"):  # mixed versions: scored in the collection space
            queries = q if model == "v2" else old[n:]
            assert_same_answer(f32.search(queries, 10, model=model, **knobs),
                               ints.search(queries, 10, model=model, **knobs))
        # one query's own figures are the call's: its vectors of either width counted right
        stats = ints.search(q[:1], 10, model="v2", return_stats=True, **knobs).stats
        assert stats is not None and stats.per_query.bytes_read[0] == stats.bytes_read
        # base vectors still come back exactly; backfilled ones as their base-space image
        got = ints.get(np.arange(n // 2 - 2, n // 2 + 2))
        np.testing.assert_array_equal(got[2:], old[n // 2 : n // 2 + 2])
        np.testing.assert_allclose(got[:2], f32.get(np.arange(n // 2 - 2, n // 2)), atol=1e-4)
        for coll in (f32, ints):
            coll.backfill("v2", new[n // 2 : n], np.arange(n // 2, n), progress=False)
            coll.retire("default")
            coll.rebase()
        assert ints.config.vector_dtype == "float32"  # the new model's vectors are floats
        assert_same_answer(f32.search(q, 10, **knobs), ints.search(q, 10, **knobs))
    finally:
        f32.close()
        ints.close()
    with anns.Collection.open(tmp_path / "int8") as coll:
        assert coll.config.vector_dtype == "float32" and coll.count() == n


@pytest.mark.parametrize("flag", ["uint8", "auto"])
def test_cli_build_stores_integers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    x = integer_data(4, 300, 8, "uint8")
    np.save(tmp_path / "x.npy", x)
    main(["build", str(tmp_path / "c"), "--vectors", str(tmp_path / "x.npy"),
          "--vector-dtype", flag, "--no-progress"])
    if flag == "auto":
        assert "vector_dtype auto: uint8" in capsys.readouterr().err
        np.save(tmp_path / "f.npy", x + 0.5)  # and floats stay floats
        main(["build", str(tmp_path / "f"), "--vectors", str(tmp_path / "f.npy"),
              "--vector-dtype", "auto", "--no-progress"])
        assert "vector_dtype auto: float32" in capsys.readouterr().err
    capsys.readouterr()
    store = Storage.open(tmp_path / "c", anns.StorageConfig(read_only=True))
    try:
        assert {len(b) for b in store.get_vectors(np.arange(5))} == {8}
    finally:
        store.close()
    with anns.Collection.open(tmp_path / "c") as coll:
        np.testing.assert_array_equal(coll.get(np.arange(300)), x)


def test_searches_keep_only_the_prefix_columns_of_the_basis_in_ram(tmp_path: Path) -> None:
    x = integer_data(5, 600, 48, "uint8")
    anns.build(tmp_path / "c", x, config={"vector_dtype": "uint8", "posting_size": 32,
                                          "d_scan": 12, "codec": "opq", "pq_m": 4})
    with anns.Collection.open(tmp_path / "c") as coll:
        full = 48 * 48 * 4
        assert coll.info()["memory"]["basis"] < full  # opened without the matrix
        coll.search(x[:20] + 0.5, 10, max_postings=4)
        assert coll.info()["memory"]["basis"] < full / 2  # 13 columns: the prefix, no more
        np.testing.assert_array_equal(coll.get([3]), x[3:4])  # as given: no basis either
        coll.add(x[:2], [1000, 1001])  # a write maps through the whole basis: loads it
        assert coll.info()["memory"]["basis"] > full
        after = coll.search(x[:20] + 0.5, 10, max_postings=4)
    with anns.Collection.open(tmp_path / "c") as reopened:  # lazy again, same answers
        assert_same_answer(after, reopened.search(x[:20] + 0.5, 10, max_postings=4))
        # a rerank on other prefixes slices the whole matrix (loaded once), caching none
        for d_rerank in range(13, 48):
            reopened.search(x[:2], 5, max_postings=2, d_rerank=d_rerank)
        assert reopened.info()["memory"]["basis"] <= full + 48 * 13 * 4 + 48 * 8
    # dropped unclosed after a search, it lets go of its database at once: neither the lazy
    # basis's loader nor the I/O threads hold on to it
    dropped = anns.Collection.open(tmp_path / "c")
    dropped.search(x[:2], 5)
    del dropped
    anns.Collection.open(tmp_path / "c").close()


def test_a_tuned_integer_collection_meets_its_target_on_unseen_queries(tmp_path: Path) -> None:
    x = integer_data(6, 2500, 32, "uint8")
    # from the data's distribution but not stored (nor sampled by tune); floats, so no ties
    x_more = integer_data(6, 2600, 32, "uint8")[2500:]
    queries = (x_more + np.random.default_rng(8).normal(0, 2, x_more.shape)).astype(np.float32)
    anns.build(tmp_path / "c", x, config={"vector_dtype": "uint8", "posting_size": 32,
                                          "d_scan": 16, "d_route": 8, "codec": "opq",
                                          "pq_m": 6})
    with anns.Collection.open(tmp_path / "c") as coll:
        report = coll.tune(0.9, queries=150)
        assert report.profile.recall >= 0.9
        assert {p.params["d_rerank"] for p in report.curve} == {32}  # no shorter rerank
        found = coll.search(queries, 10, target_recall=0.9).ids
    truth = exact_knn(x, queries, 10, "l2")[0]
    recall = float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())
    assert recall >= 0.9 - 0.02
