"""Stage dims (AdANNS) on collections: routing on a prefix of the scanned prefix of the
collection basis, per-query d_route / d_rerank, the Matryoshka identity basis, and writes and
bad configurations around them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import anns
import strategies as S
from anns import CorruptCollectionError, InvalidArgumentError, SearchParams, StorageConfig
from anns.basis import Basis
from anns.evaluation import clustered_data, exact_knn, recall_at
from anns.storage import Storage, decode_posting
from invariants import (
    assert_matches_brute_force,
    assert_same_vectors,
    check_layout,
    exhaustive,
    read_layout,
)

Data = tuple[np.ndarray, np.ndarray]

#: The staged layout most tests use: dim 32 -> route on 8 dims, scan codes of 16.
STAGED = {"d_route": 8, "d_scan": 16, "posting_size": 32}
#: OPQ settings small enough to train in a fraction of a second on 1000 x 16.
CODEC_FIELDS = {"sq8": {"codec": "sq8"}, "opq": {"codec": "opq", "pq_m": 4}}


def _basis(coll: anns.Collection) -> Basis:
    view = coll._view
    assert view is not None
    return view.basis


def _stored(coll: anns.Collection, ids: np.ndarray) -> np.ndarray:
    """The vectors as stored: float32 [n, dim] in the collection basis."""
    blobs = coll._storage.get_vectors(np.asarray(ids, dtype=np.int64))
    present = [b for b in blobs if b is not None]
    assert len(present) == len(blobs)
    return np.frombuffer(b"".join(present), dtype="<f4").reshape(len(blobs), coll.dim)


def _in_basis(coll: anns.Collection, x: np.ndarray) -> np.ndarray:
    """Raw vectors as the collection sees them: normalised for cosine, then rotated."""
    x = np.asarray(x, dtype=np.float32)
    if coll.config.metric == "cosine":
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return _basis(coll).apply(x)


def _decaying(base: np.ndarray, queries: np.ndarray, seed: int = 5) -> Data:
    """``base`` and ``queries`` with energy decaying along hidden directions (scales
    2^(-j/6) along the rows of a random rotation), as in real embeddings: what PCA orders."""
    dim = base.shape[1]
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    scale = 2.0 ** (-np.arange(dim) / 6)
    return (
        ((base * scale) @ rotation).astype(np.float32),
        ((queries * scale) @ rotation).astype(np.float32),
    )


@pytest.fixture(scope="module")
def thousand(clustered: Data) -> Data:
    """1000 x 32 clustered vectors and 100 queries: small enough for OPQ to train fast."""
    return clustered[0][:1000], clustered[1]


@pytest.fixture(scope="module", params=["sq8", "opq"])
def staged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           thousand: Data) -> Path:
    """A collection of ``thousand`` built with STAGED dims; tests must not modify it."""
    path = tmp_path_factory.mktemp("staged") / request.param
    anns.build(path, thousand[0], config={**STAGED, **CODEC_FIELDS[request.param]})
    return path


@pytest.fixture
def staged_coll(staged: Path) -> Iterator[anns.Collection]:
    with anns.Collection.open(staged, StorageConfig(read_only=True)) as coll:
        yield coll


# ----------------------------------------------------------------------------- info
def test_info_reports_the_stage_dims_and_centroids_at_d_route(
    staged_coll: anns.Collection,
) -> None:
    info = staged_coll.info()
    assert info["format_version"] == 5
    assert info["basis"] == "pca"
    assert info["stage_dims"] == {"d_route": 8, "d_scan": 16, "d_rerank": 32}
    assert info["centroid_bytes"] == info["postings"] * 8 * 4
    view = staged_coll._view
    assert view is not None and view.router.centroids.shape == (info["postings"], 8)
    codec = staged_coll.config.codec
    # the codes of the 16-dim prefix, and two bytes of tail norm (the dims beyond 16)
    assert info["code_size"] == (16 if codec == "sq8" else 4) + 2
    assert view.codec.dim == 16
    energy = info["prefix_energy"]
    basis = _basis(staged_coll)
    assert energy["d_route"] == pytest.approx(basis.prefix_energy(8), abs=1e-4)
    assert energy["d_scan"] == pytest.approx(basis.prefix_energy(16), abs=1e-4)
    assert 8 / 32 < energy["d_route"] < energy["d_scan"] < 1.0, "PCA puts energy first"


def test_a_collection_without_stage_dims_reports_all_dims(tmp_path: Path, small: Data) -> None:
    anns.build(tmp_path / "c", small[0], config={"posting_size": 32})
    with anns.Collection.open(tmp_path / "c") as coll:
        info = coll.info()
    assert info["stage_dims"] == {"d_route": 8, "d_scan": 8, "d_rerank": 8}
    assert info["prefix_energy"] == {"d_route": 1.0, "d_scan": 1.0}
    assert info["centroid_bytes"] == info["postings"] * 8 * 4


# ---------------------------------------------------------------- exhaustive = exact
@pytest.mark.parametrize("codec", ["sq8", "opq"])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@given(
    data=S.datasets(min_n=40, max_n=250, dim=st.integers(4, 16)), k=st.integers(1, 30),
    stages=st.data(),
)
def test_exhaustive_search_of_staged_collections_is_brute_force(
    tmp_path_factory: pytest.TempPathFactory, metric: str, codec: str, data: Data, k: int,
    stages: st.DataObject,
) -> None:
    base, queries = data
    dim = base.shape[1]
    d_scan = stages.draw(st.integers(1, dim), label="d_scan")
    d_route = stages.draw(st.integers(1, d_scan), label="d_route")
    config = {
        "metric": metric, "codec": codec, "pq_m": stages.draw(st.sampled_from([1, 2, 3, 4])),
        "d_route": d_route, "d_scan": d_scan, "posting_size": 16, "max_posting_size": 40,
        "matryoshka": stages.draw(st.booleans(), label="matryoshka"),
    }
    path = tmp_path_factory.mktemp("exhaustive") / "c"
    anns.build(path, base, config=config)
    with anns.Collection.open(path) as coll:
        result = coll.search(queries, k, exhaustive(len(base), k))
        # routing on fewer dims than stored changes which postings come first, not the answer
        fewer = coll.search(
            queries, k, exhaustive(len(base), k).model_copy(update={"d_route": 1})
        )
    for got in (result, fewer):
        assert_matches_brute_force(
            got, base, np.arange(len(base)), queries, k, metric, exact_ids=True
        )


# ------------------------------------------------------------------------- recall
@pytest.mark.parametrize(("codec", "floor"), [("sq8", 0.95), ("opq", 0.9)])
def test_staged_search_of_clustered_data_reaches_recall_when_reranking_deeper(
    tmp_path: Path, thousand: Data, codec: str, floor: float
) -> None:
    # clustered data has isotropic noise: the 16-dim scan prefix keeps ~89% of the energy and
    # ranks neighbours within a cluster coarsely, so the rerank must look deeper than the
    # default 1.5 k (measured at 1.5: sq8 0.88, opq 0.78; at 3: sq8 0.997, opq 0.972)
    base, queries = thousand
    anns.build(tmp_path / "c", base, config={**STAGED, **CODEC_FIELDS[codec]})
    truth, _ = exact_knn(base, queries, 10)
    with anns.Collection.open(tmp_path / "c") as coll:
        deeper = recall_at(coll.search(queries, 10, refine_factor=3).ids, truth, 10)
        default = recall_at(coll.search(queries, 10).ids, truth, 10)
    assert deeper >= floor
    assert default >= floor - 0.25
    assert deeper >= default


@pytest.mark.parametrize(("codec", "floor"), [("sq8", 0.95), ("opq", 0.85)])
def test_staged_search_reaches_recall_at_defaults_when_energy_decays(
    tmp_path: Path, thousand: Data, codec: str, floor: float
) -> None:
    # the AdANNS premise: with a decaying spectrum PCA puts what ranks neighbours first, so
    # 8 routing and 16 scanned dims of 32 lose little (measured: sq8 1.0, opq 0.93)
    base, queries = _decaying(*thousand)
    anns.build(tmp_path / "c", base, config={**STAGED, **CODEC_FIELDS[codec]})
    truth, _ = exact_knn(base, queries, 10)
    with anns.Collection.open(tmp_path / "c") as coll:
        assert recall_at(coll.search(queries, 10).ids, truth, 10) >= floor
        assert coll.info()["prefix_energy"]["d_scan"] > 0.98


def test_a_pca_basis_keeps_more_energy_in_the_prefixes_than_the_identity(
    tmp_path: Path, thousand: Data
) -> None:
    base, queries = _decaying(*thousand)
    truth, _ = exact_knn(base, queries, 10)
    recall, energy = {}, {}
    for matryoshka in (False, True):
        path = tmp_path / str(matryoshka)
        anns.build(path, base, config={**STAGED, "matryoshka": matryoshka})
        with anns.Collection.open(path) as coll:
            recall[matryoshka] = recall_at(coll.search(queries, 10).ids, truth, 10)
            energy[matryoshka] = coll.info()["prefix_energy"]
    assert energy[True] == {"d_route": 0.25, "d_scan": 0.5}  # the identity: uniform
    assert energy[False]["d_route"] > 0.8 and energy[False]["d_scan"] > 0.98
    assert recall[False] >= recall[True]


# ------------------------------------------------------------- per-query stage dims
def test_a_query_cannot_route_on_more_dims_than_the_centroids_hold(
    staged_coll: anns.Collection, thousand: Data
) -> None:
    with pytest.raises(InvalidArgumentError, match=r"d_route 9 .* d_route 8"):
        staged_coll.search(thousand[1][:3], 5, d_route=9)
    with pytest.raises(InvalidArgumentError, match=r"d_route 32 .* d_route 8"):
        staged_coll.search(thousand[1][:3], 5, SearchParams(d_route=32))


def test_a_query_cannot_rerank_on_more_dims_than_stored(
    staged_coll: anns.Collection, thousand: Data
) -> None:
    with pytest.raises(InvalidArgumentError, match=r"d_rerank 33 .* dim 32"):
        staged_coll.search(thousand[1][:3], 5, d_rerank=33)


@pytest.mark.parametrize("knob", ["d_route", "d_rerank"])
@pytest.mark.parametrize("value", [0, -1])
def test_stage_dims_of_a_search_must_be_positive(
    staged_coll: anns.Collection, thousand: Data, knob: str, value: int
) -> None:
    with pytest.raises(InvalidArgumentError, match=knob):
        staged_coll.search(thousand[1][:3], 5, **{knob: value})


@pytest.mark.parametrize("d_route", [1, 4, 8])
def test_routing_on_fewer_dims_returns_valid_exact_results(
    staged_coll: anns.Collection, thousand: Data, d_route: int
) -> None:
    base, queries = thousand
    # eps2 = inf: on one dim the ratio rule would keep only the nearest posting (every other
    # centroid is many times farther than a near-zero nearest distance) and pad with -1
    result = staged_coll.search(queries, 10, d_route=d_route, refine_factor=3, eps2=math.inf)
    assert result.ids.shape == (len(queries), 10)
    assert ((result.ids >= 0) & (result.ids < len(base))).all()
    for row in range(len(queries)):
        assert len(set(result.ids[row].tolist())) == 10
    # the rerank is on full vectors: every distance is the exact one of its id
    exact = ((queries[:, None, :].astype(np.float64) - base[result.ids]) ** 2).sum(-1)
    np.testing.assert_allclose(result.distances, exact, rtol=1e-4, atol=1e-4)
    assert (np.diff(result.distances, axis=1) >= 0).all()
    if d_route >= 4:  # on one dim the choice of postings is close to arbitrary
        truth, _ = exact_knn(base, queries, 10)
        assert recall_at(result.ids, truth, 10) >= 0.9


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("d_rerank", [1, 5, 12, 16])
def test_reranking_on_a_prefix_ranks_by_prefix_distances_in_the_basis(
    tmp_path_factory: pytest.TempPathFactory, metric: str, d_rerank: int
) -> None:
    base, queries = S.gaussian(1, 300, 16, shift=0.3), S.gaussian(2, 12, 16, shift=0.3)
    path = tmp_path_factory.mktemp("rerank") / "c"
    config = {"metric": metric, "d_route": 4, "d_scan": 8, "posting_size": 16}
    anns.build(path, base, config=config)
    k = 7
    with anns.Collection.open(path) as coll:
        params = exhaustive(len(base), k).model_copy(update={"d_rerank": d_rerank})
        result = coll.search(queries, k, params)
        stored = _stored(coll, np.arange(len(base)))
        rotated = _in_basis(coll, queries)
    # with every vector reranked, the answer is brute force over the stored prefixes
    oracle = "l2" if metric == "l2" else "ip"  # cosine: both sides are unit vectors already
    assert_matches_brute_force(
        result, stored[:, :d_rerank], np.arange(len(base)), rotated[:, :d_rerank], k, oracle,
        exact_ids=True,
    )


def test_a_configured_d_rerank_is_the_default_and_a_query_may_override_it(
    tmp_path: Path, thousand: Data
) -> None:
    base, queries = thousand
    anns.build(tmp_path / "c", base, config={**STAGED, "d_rerank": 12})
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.info()["stage_dims"] == {"d_route": 8, "d_scan": 16, "d_rerank": 12}
        params = exhaustive(len(base), 5)
        default = coll.search(queries[:10], 5, params)
        full = coll.search(queries[:10], 5, params.model_copy(update={"d_rerank": 32}))
        stored = _stored(coll, np.arange(len(base)))
        rotated = _in_basis(coll, queries[:10])
    ids = np.arange(len(base))
    assert_matches_brute_force(default, stored[:, :12], ids, rotated[:, :12], 5, "l2")
    assert_matches_brute_force(full, base, ids, queries[:10], 5, "l2", exact_ids=True)


# -------------------------------------------------------------------------- bases
def test_a_matryoshka_collection_stores_vectors_as_given(tmp_path: Path, thousand: Data) -> None:
    base, queries = thousand
    anns.build(tmp_path / "c", base, config={**STAGED, "matryoshka": True})
    with anns.Collection.open(tmp_path / "c") as coll:
        info = coll.info()
        assert info["basis"] == "identity"
        assert info["prefix_energy"] == {"d_route": 0.25, "d_scan": 0.5}
        ids = np.arange(len(base))
        np.testing.assert_array_equal(coll.get(ids), base)  # bit-exact
        np.testing.assert_array_equal(_stored(coll, ids), base)
        # routing reads the raw prefix: the centroids are means of raw prefixes
        view = coll._view
        assert view is not None
        cents = view.router.centroids
        assert cents.shape[1] == 8
        lo, hi = base[:, :8].min(axis=0), base[:, :8].max(axis=0)
        assert ((cents >= lo - 1e-5) & (cents <= hi + 1e-5)).all()
        result = coll.search(queries, 10, exhaustive(len(base), 10))
    assert_matches_brute_force(result, base, ids, queries, 10, "l2", exact_ids=True)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_a_pca_collection_returns_what_was_added_up_to_rounding(
    tmp_path: Path, thousand: Data, metric: str
) -> None:
    base, _ = thousand
    anns.build(tmp_path / "c", base, config={**STAGED, "metric": metric})
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.info()["basis"] == "pca"
        ids = np.arange(len(base))
        got = coll.get(ids)
        stored = _stored(coll, ids)
        rotated = _in_basis(coll, base)
    want = base / np.linalg.norm(base, axis=1, keepdims=True) if metric == "cosine" else base
    assert_same_vectors(got, want)
    # what is stored is the rotated vector, not the raw one
    assert_same_vectors(stored, rotated)
    assert not np.allclose(stored, want, atol=1e-3)


# ------------------------------------------------------------------------- writes
def test_adds_after_build_to_a_staged_opq_collection_are_found(
    tmp_path: Path, thousand: Data
) -> None:
    # small postings, so the adds split postings: the split clusters decoded OPQ codes on
    # their routing prefix
    base, queries = thousand
    first, later = base[:300], base[300:600]
    config = {**STAGED, **CODEC_FIELDS["opq"], "posting_size": 16, "max_posting_size": 32}
    anns.build(tmp_path / "c", first, config=config)
    with anns.Collection.open(tmp_path / "c") as coll:
        before = coll.info()["postings"]
        for start in range(0, len(later), 60):
            rows = later[start : start + 60]
            ids = np.arange(300 + start, 300 + start + len(rows))
            assert coll.add(rows, ids).tolist() == ids.tolist()
        info = coll.info()
        assert info["count"] == 600
        assert info["postings"] > before, "the adds should have split postings"
        assert info["centroid_bytes"] == info["postings"] * 8 * 4
        view = coll._view
        assert view is not None and view.router.dim == 8
        all_ids = np.arange(600)
        check_layout(read_layout(coll._storage, all_ids), all_ids)
        # every added vector finds itself first. Pruning is off: after splits some vectors
        # sit in a posting farther than (1 + eps2) x their nearest centroid, so the default
        # eps2 misses a few percent of exact self-queries (with every codec and without stage
        # dims too; no split reassigns neighbours)
        mine = coll.search(later, 1, refine_factor=5, eps2=math.inf)
        np.testing.assert_array_equal(mine.ids[:, 0], np.arange(300, 600))
        np.testing.assert_allclose(mine.distances[:, 0], 0.0, atol=1e-4)
        exact = coll.search(queries, 10, exhaustive(600, 10))
        assert_same_vectors(coll.get(np.arange(300, 600)), later)
    assert_matches_brute_force(exact, base[:600], all_ids, queries, 10, "l2", exact_ids=True)


def test_a_collection_created_empty_fits_its_basis_on_the_first_add(
    tmp_path: Path, thousand: Data
) -> None:
    base, queries = thousand
    config = anns.IndexConfig(dim=32, d_route=8, d_scan=16, codec="opq", pq_m=4, posting_size=32)
    with anns.Collection.create(tmp_path / "c", config) as coll:
        coll.add(base[:400])  # well over d_scan vectors: OPQ training needs n >= dims
        assert coll.info()["basis"] == "pca"
        assert coll.info()["stage_dims"] == {"d_route": 8, "d_scan": 16, "d_rerank": 32}
        coll.add(base[400:])
        result = coll.search(queries, 10, exhaustive(len(base), 10))
    assert_matches_brute_force(result, base, np.arange(len(base)), queries, 10, "l2")


# ------------------------------------------------------------- bad configurations
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_route": 16, "d_scan": 8}, "d_route 16 is larger than d_scan 8"),
        ({"d_route": 8, "d_scan": 40}, "d_scan 40 is larger than dim 32"),
        ({"d_route": 33}, "d_route 33 is larger than dim 32"),
        ({"d_rerank": 64}, "d_rerank 64 is larger than dim 32"),
        ({"d_route": 0}, "d_route: Input should be greater than or equal to 1"),
        ({"d_scan": 0}, "d_scan: Input should be greater than or equal to 1"),
        ({"d_rerank": -3}, "d_rerank: Input should be greater than or equal to 1"),
        ({"pq_m": 0, "codec": "opq"}, "pq_m: Input should be greater than or equal to 1"),
    ],
)
def test_bad_stage_dims_are_refused_by_build_naming_them(
    tmp_path: Path, small: Data, fields: dict[str, int], message: str
) -> None:
    base = np.concatenate([small[0]] * 4, axis=1)[:100]  # 100 x 32
    with pytest.raises(InvalidArgumentError, match=message):
        anns.build(tmp_path / "c", base, config=fields)
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- basis on disk
def _replace_basis(path: Path, blob: bytes) -> None:
    storage = Storage.open(path, StorageConfig())
    try:
        batch = storage.batch()
        batch.put_meta("basis", blob)
        storage.write(batch)
    finally:
        storage.close()


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
    ],
)
def test_a_collection_whose_basis_is_unreadable_refuses_to_open(
    tmp_path: Path, small: Data, damage: str
) -> None:
    anns.build(tmp_path / "c", small[0], config={"posting_size": 32})
    blob = Basis.fit_pca(small[0], "l2").to_bytes()
    _replace_basis(tmp_path / "c", blob[: len(blob) // 2] if damage == "truncated" else b"junk")
    with pytest.raises(CorruptCollectionError, match="basis"):
        anns.Collection.open(tmp_path / "c")


def test_a_collection_whose_basis_has_the_wrong_shape_refuses_to_open(
    tmp_path: Path, small: Data
) -> None:
    anns.build(tmp_path / "c", small[0], config={"posting_size": 32})
    wrong = Basis.fit_pca(S.gaussian(0, 30, 5), "l2")  # dim 5 for a dim-8 collection
    _replace_basis(tmp_path / "c", wrong.to_bytes())
    with pytest.raises(CorruptCollectionError, match="basis"):
        anns.Collection.open(tmp_path / "c")


def test_tail_norms_rank_more_true_neighbours_into_the_same_rerank_depth(tmp_path: Path) -> None:
    # energy decays over the dims, so the 8-dim prefix leaves out a real share of each
    # distance: the tail estimate must recover some of it at an equal rerank depth
    base, queries = clustered_data(3000, 32, queries=200, seed=1, spread=0.5)
    decay = np.geomspace(1, 0.15, 32).astype(np.float32)
    base, queries = base * decay, queries * decay
    truth, _ = exact_knn(base, queries, 10, "l2")
    recall = {}
    for tail in (False, True):
        config = {"dim": 32, "codec": "opq", "pq_m": 8, "d_scan": 8, "d_route": 8,
                  "posting_size": 32, "tail_norms": tail}
        anns.build(tmp_path / str(tail), base, config=config)
        with anns.Collection.open(tmp_path / str(tail)) as coll:
            assert coll.info()["code_size"] == 8 + 2 * tail
            found = coll.search(queries, 10, max_postings=8, refine_factor=1.5).ids
            recall[tail] = recall_at(found, truth, 10)
    assert recall[True] > recall[False] + 0.005, recall


def test_a_tail_collection_searches_past_a_posting_emptied_by_deletes(tmp_path: Path) -> None:
    # the read path hands an emptied posting to the scan as codes of shape (0, 0)
    base, queries = clustered_data(1000, 32, queries=20, seed=2)
    config = {"codec": "opq", "pq_m": 4, "d_scan": 8, "d_route": 8, "posting_size": 32}
    anns.build(tmp_path / "c", base, config=config)
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.info()["code_size"] == 4 + 2
        key, blob = next(iter(coll._storage.iter_postings()))
        emptied, _ = decode_posting(bytes(blob), coll.info()["code_size"])
        coll.delete(emptied)
        assert len(decode_posting(bytes(coll._storage.get_postings(
            np.array([int.from_bytes(bytes(key), "big")]))[0] or b""), 6)[0]) == 0
        found = coll.search(queries, 10, max_postings=1000, eps2=math.inf, refine_factor=50)
    live = np.setdiff1d(np.arange(1000), emptied)
    truth, _ = exact_knn(base[live], queries, 10, "l2")
    assert not np.isin(found.ids, emptied).any()
    assert recall_at(found.ids, live[truth], 10) == 1.0
