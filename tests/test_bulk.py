"""Bulk build: the postings it writes obey the replication rules; failures leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import anns
import strategies as S
from anns import (
    CollectionExistsError,
    DimensionMismatchError,
    DTypeError,
    DuplicateIdsError,
    IncompleteBuildError,
    IndexConfig,
    InvalidArgumentError,
    NonFiniteError,
)
from invariants import (
    assert_same_vectors,
    check_layout,
    check_replication,
    exhaustive,
    read_layout_at,
)

Data = tuple[np.ndarray, np.ndarray]


# ------------------------------------------------------------------- posting invariants
@given(data=S.datasets(min_n=20, max_n=400, queries=0), cfg=st.data())
def test_built_postings_obey_cap_closure_rng_and_size(
    data: tuple[np.ndarray, np.ndarray], cfg: st.DataObject
) -> None:
    base, _ = data
    config = cfg.draw(S.index_configs(base.shape[1]))
    ids = np.arange(len(base), dtype=np.int64)
    with tempfile.TemporaryDirectory() as d:
        summary = anns.build(Path(d) / "c", base, config=config)
        layout = read_layout_at(Path(d) / "c", ids)
    check_layout(layout, ids)  # every vector in >= 1 posting, <= replica_cap, size cap
    check_replication(layout, ids)  # nearest first, closure (eps1) and the RNG rule
    lengths = np.array([len(p) for p in layout.postings.values()])
    assert summary.n == len(base) and summary.dim == base.shape[1]
    assert summary.postings == len(layout.postings) == len(layout.centroids)
    assert summary.posting_len_max == lengths.max() <= config.max_posting_size
    assert summary.posting_len_min == lengths.min() >= 1
    assert summary.mean_replicas == pytest.approx(lengths.sum() / len(base), abs=1e-4)


def test_built_collection_of_clustered_data(tmp_path: Path, clustered: Data) -> None:
    base, _ = clustered
    config = {"posting_size": 12, "max_posting_size": 20, "eps1": 0.3, "replica_cap": 4}
    anns.build(tmp_path / "c", base, config=config)
    ids = np.arange(len(base))
    layout = read_layout_at(tmp_path / "c", ids)
    check_layout(layout, ids)
    check_replication(layout, ids)
    replicas = np.array([len(layout.records[i][1]) for i in ids.tolist()])
    assert replicas.max() > 1, "a wide closure replicates boundary vectors"


def test_replica_cap_one_means_no_replicas(tmp_path: Path, small: Data) -> None:
    config = {"replica_cap": 1, "eps1": 5.0, "posting_size": 8}
    anns.build(tmp_path / "c", small[0], config=config)
    ids = np.arange(600)
    layout = read_layout_at(tmp_path / "c", ids)
    check_layout(layout, ids)
    assert sum(len(p) for p in layout.postings.values()) == 600


def test_cosine_build_stores_unit_vectors(tmp_path: Path, small: Data) -> None:
    base, queries = small
    anns.build(tmp_path / "c", base * 3.0, config={"metric": "cosine", "posting_size": 16})
    with anns.Collection.open(tmp_path / "c") as coll:
        stored = coll.get(np.arange(600))
        result = coll.search(queries, 5, exhaustive(600, 5))
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(stored, base / np.linalg.norm(base, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    assert (result.distances[:, 0] <= 1.0 + 1e-5).all()


def test_build_is_deterministic_for_a_seed(tmp_path: Path, small: Data) -> None:
    base, queries = small
    layouts, results = [], []
    for name in ("a", "b"):
        anns.build(tmp_path / name, base, config={"posting_size": 16, "seed": 5})
        layouts.append(read_layout_at(tmp_path / name, np.arange(600)))
        with anns.Collection.open(tmp_path / name) as coll:
            results.append(coll.search(queries, 10))
    np.testing.assert_array_equal(layouts[0].centroids, layouts[1].centroids)
    assert layouts[0].postings.keys() == layouts[1].postings.keys()
    for pid in layouts[0].postings:
        np.testing.assert_array_equal(layouts[0].postings[pid], layouts[1].postings[pid])
    np.testing.assert_array_equal(results[0].ids, results[1].ids)


def test_build_with_ids_and_integer_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = rng.integers(-1000, 1000, (300, 6)).astype(np.int32)
    ids = rng.permutation(10**6)[:300].astype(np.int64) * 1000
    summary = anns.build(tmp_path / "c", base, ids, config={"posting_size": 10})
    assert summary.n == 300
    layout = read_layout_at(tmp_path / "c", ids)
    check_layout(layout, ids)
    with anns.Collection.open(tmp_path / "c") as coll:
        assert_same_vectors(coll.get(ids[:3]), base[:3].astype(np.float32))
        assert coll.search(base[7].astype(np.float32), 1).ids[0, 0] == ids[7]
        # default ids of a later add continue after the largest id built
        assert coll.add(np.ones((1, 6), np.float32)).tolist() == [int(ids.max()) + 1]


def test_build_accepts_an_index_config(tmp_path: Path, small: Data) -> None:
    config = IndexConfig(dim=8, posting_size=20, codec="flat")
    anns.build(tmp_path / "c", small[0], config=config)
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.config.posting_size == 20 and coll.config.codec == "flat"
        assert coll.search(small[0][:4], 1).ids[:, 0].tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------- failures
def test_failed_build_removes_the_directory(tmp_path: Path) -> None:
    x = S.gaussian(0, 100, 4)
    x[77, 2] = np.nan
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        anns.build(tmp_path / "c", x)
    assert not (tmp_path / "c").exists()


def test_a_bad_row_is_named_by_its_row_in_the_input(tmp_path: Path) -> None:
    x = S.gaussian(0, 30_000, 4)
    x[29_000:, 1] = np.nan  # met first in the training sample, at other positions in it
    with pytest.raises(NonFiniteError, match=r"first at row 29\d\d\d\b"):
        anns.build(tmp_path / "c", x, config={"train_sample_mb": 0.05})


def test_failed_build_into_an_empty_directory_leaves_it_empty(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    x = S.gaussian(0, 100, 4)
    x[3, 0] = np.inf
    with pytest.raises(NonFiniteError):
        anns.build(tmp_path / "c", x)
    assert (tmp_path / "c").is_dir() and not any((tmp_path / "c").iterdir())
    anns.build(tmp_path / "c", S.gaussian(0, 100, 4))  # and it can be used afterwards
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.count() == 100


def test_build_over_an_existing_collection_keeps_it(tmp_path: Path, small: Data) -> None:
    anns.build(tmp_path / "c", small[0][:50])
    with pytest.raises(CollectionExistsError, match="already exists"):
        anns.build(tmp_path / "c", small[0])
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.count() == 50


def test_build_into_a_non_empty_directory_keeps_its_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CollectionExistsError, match="not empty"):
        anns.build(tmp_path, S.gaussian(0, 10, 4))
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("vectors", "ids", "config", "error", "message"),
    [
        (np.empty((0, 4), np.float32), None, None, InvalidArgumentError, "zero vectors"),
        (np.ones(4, np.float32), None, None, DimensionMismatchError, "2-D"),
        (np.array([["a", "b"]]), None, None, DTypeError, "dtype <U1"),
        (np.ones((3, 2), np.complex64), None, None, DTypeError, "complex64"),
        (np.ones((3, 4), np.float32), [1, 2, 1], None, DuplicateIdsError, "duplicate ids"),
        (np.ones((3, 4), np.float32), [1, 2], None, InvalidArgumentError, "got 2 ids for 3"),
        (np.ones((3, 4), np.float32), [0.0, 1.0, 2.0], None, DTypeError, "integer"),
        (np.ones((3, 4), np.float32), None, {"dim": 5}, DimensionMismatchError, "config dim 5"),
        (np.ones((3, 4), np.float32), None, IndexConfig(dim=5), DimensionMismatchError, "dim 5"),
        (np.ones((3, 4), np.float32), None, {"posting_size": 0}, InvalidArgumentError,
         "posting_size"),
    ],
)
def test_bad_build_input(
    tmp_path: Path, vectors: np.ndarray, ids: object, config: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        anns.build(tmp_path / "c", vectors, ids, config)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()


_KILLED_BUILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import anns
    from anns.storage import Storage

    def die(self, *args, **kwargs):  # the process is killed after the data, before "ready"
        os._exit(17)

    Storage.compact = die
    rng = np.random.default_rng(0)
    anns.build(sys.argv[1], rng.standard_normal((500, 8)).astype(np.float32))
    """
)


def test_a_killed_build_is_detected_on_open(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_BUILD, str(tmp_path / "c")], capture_output=True,
        timeout=120,
    )
    assert done.returncode == 17, done.stderr.decode()
    assert (tmp_path / "c").is_dir(), "a killed process cannot clean up"
    with pytest.raises(IncompleteBuildError, match="did not finish.*run the build again"):
        anns.Collection.open(tmp_path / "c")


@pytest.mark.parametrize("kind", ["identical", "zeros among others", "near-duplicates"])
def test_a_build_of_alike_vectors_keeps_every_posting_under_the_cap(
    tmp_path: Path, kind: str
) -> None:
    # split centroids of identical vectors are identical: nearest-centroid assignment drew
    # all 1,000 back into one posting, over max_posting_size 128, whatever the rounds
    rng = np.random.default_rng(0)
    x = {
        "identical": np.ones((1000, 8)),
        "zeros among others": np.vstack([rng.standard_normal((3000, 8)), np.zeros((1500, 8))]),
        "near-duplicates": np.ones((3000, 8)) + rng.standard_normal((3000, 8)) * 1e-3,
    }[kind].astype(np.float32)
    summary = anns.build(tmp_path / "c", x)
    check_layout(read_layout_at(tmp_path / "c", np.arange(len(x))), np.arange(len(x)))
    with anns.Collection.open(tmp_path / "c") as coll:
        assert summary.posting_len_max <= coll.config.max_posting_size
        found = coll.search(x[-5:], 10).ids
        assert (found >= 0).all()
        np.testing.assert_allclose(coll.get(found[0]), np.repeat(x[-1:], 10, 0), atol=0.02)
