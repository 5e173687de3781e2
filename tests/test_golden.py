"""Compatibility: a collection written by the previous version (format 1, raw vectors, no
basis) still opens, answers as it did, and takes writes; new collections are format 3.

tests/golden/v1 was built by that version from 300 x 16 Gaussian vectors (seed 7) with
posting_size 16 and max_posting_size 48; tests/golden/v1-expected.npz holds the vectors, 20
queries and what an exhaustive search (k=5, max_postings=1000, eps2=inf, refine_factor=100)
returned then. Tests open a copy: opening the committed directory would write to it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import anns
import strategies as S
from anns import SearchParams, StorageConfig
from anns.storage import FORMAT_VERSION, READABLE_FORMATS, Storage
from invariants import assert_matches_brute_force, check_layout, exhaustive, read_layout

GOLDEN = Path(__file__).parent / "golden"
#: The search the expected answers were recorded with.
RECORDED = SearchParams(max_postings=1000, eps2=math.inf, refine_factor=100)


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "v1-expected.npz") as z:
        return {name: z[name] for name in z.files}


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    """A private copy of the golden format-1 collection."""
    return Path(shutil.copytree(GOLDEN / "v1", tmp_path / "v1"))


def test_the_golden_collection_is_format_1_and_this_version_reads_it() -> None:
    marker = json.loads((GOLDEN / "v1" / "ANNS_COLLECTION").read_text())
    assert marker["format_version"] == 1
    assert 1 in READABLE_FORMATS and FORMAT_VERSION == 5


def test_a_format_1_collection_opens_with_the_identity_basis(v1: Path) -> None:
    with anns.Collection.open(v1) as coll:
        info = coll.info()
    assert info["format_version"] == 1
    assert info["basis"] == "identity"
    assert info["count"] == 300
    assert info["config"]["dim"] == 16 and info["config"]["metric"] == "l2"
    assert info["config"]["posting_size"] == 16 and info["config"]["max_posting_size"] == 48
    # format 1 had no stage dims: all of them are the full dim, and the config says None
    assert info["stage_dims"] == {"d_route": 16, "d_scan": 16, "d_rerank": 16}
    assert info["config"]["d_route"] is None and info["config"]["matryoshka"] is False
    assert info["centroid_bytes"] == info["postings"] * 16 * 4
    assert info["code_size"] == 16  # sq8


@pytest.mark.parametrize("read_only", [False, True])
def test_a_format_1_collection_answers_as_it_did(
    v1: Path, expected: dict[str, np.ndarray], read_only: bool
) -> None:
    with anns.Collection.open(v1, StorageConfig(read_only=read_only)) as coll:
        result = coll.search(expected["queries"], 5, RECORDED)
    np.testing.assert_array_equal(result.ids, expected["ids"])
    np.testing.assert_allclose(result.distances, expected["distances"], rtol=1e-5, atol=1e-5)
    assert_matches_brute_force(
        result, expected["vectors"], np.arange(300), expected["queries"], 5, "l2",
        exact_ids=True,
    )


def test_a_format_1_collection_returns_its_vectors_exactly(
    v1: Path, expected: dict[str, np.ndarray]
) -> None:
    with anns.Collection.open(v1) as coll:
        got = coll.get(np.arange(300))
        assert coll.contains(np.array([0, 299, 300])).tolist() == [True, True, False]
    np.testing.assert_array_equal(got, expected["vectors"])  # identity basis: bit-exact


def test_a_format_1_collection_takes_writes_and_stays_format_1(
    v1: Path, expected: dict[str, np.ndarray]
) -> None:
    added = S.gaussian(99, 60, 16)
    new_ids = np.arange(1000, 1060)
    with anns.Collection.open(v1) as coll:
        coll.add(added, new_ids)
        assert coll.delete(np.array([0, 1])) == 2
        found = coll.search(added, 1, eps2=math.inf)
        np.testing.assert_array_equal(found.ids[:, 0], new_ids)
    with anns.Collection.open(v1) as coll:  # durable, and still read as format 1
        info = coll.info()
        assert info["format_version"] == 1 and info["basis"] == "identity"
        assert info["count"] == 358
        np.testing.assert_array_equal(coll.get(new_ids), added)
        live = np.concatenate([np.arange(2, 300), new_ids])
        check_layout(read_layout(coll._storage, np.concatenate([np.arange(300), new_ids])),
                     live, deleted=np.array([0, 1]))
        vectors = np.concatenate([expected["vectors"][2:], added])
        result = coll.search(expected["queries"], 5, exhaustive(len(live), 5))
    assert_matches_brute_force(
        result, vectors, live, expected["queries"], 5, "l2", exact_ids=True
    )
    marker = json.loads((v1 / "ANNS_COLLECTION").read_text())
    assert marker["format_version"] == 1


def test_new_collections_are_format_5(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    anns.build(tmp_path / "built", small[0], config={"posting_size": 32})
    with anns.Collection.open(tmp_path / "built") as coll:
        assert coll.info()["format_version"] == FORMAT_VERSION == 5
        assert coll.info()["basis"] == "pca"
    with anns.Collection.create(tmp_path / "created", anns.IndexConfig(dim=8)) as coll:
        assert coll.info()["format_version"] == 5
        assert coll.info()["basis"] is None  # empty: no basis until the first add
        coll.add(small[0][:100])
        assert coll.info()["basis"] == "pca"
    for name in ("built", "created"):
        marker = json.loads((tmp_path / name / "ANNS_COLLECTION").read_text())
        assert marker["format_version"] == 5


def _as_format_3(path: Path) -> None:
    """Make a collection look written by format 3: marker, stored version, and a config
    without ``tail_norms`` (which format 3 did not have)."""
    store = Storage.open(path, StorageConfig())
    try:
        config = json.loads(store.get_meta("config") or b"{}")
        del config["tail_norms"]
        batch = store.batch()
        batch.put_meta("config", json.dumps(config).encode())
        batch.put_meta("format_version", b"3")
        store.write(batch)
    finally:
        store.close()
    (path / "ANNS_COLLECTION").write_text(json.dumps({"format_version": 3}) + "\n")


def test_recoding_a_format_3_collection_adds_tail_norms_and_upgrades_it(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    config = {"posting_size": 32, "d_scan": 4, "d_route": 4, "tail_norms": False}
    anns.build(tmp_path / "c", base, config=config)
    _as_format_3(tmp_path / "c")
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.info()["format_version"] == 3 and coll.info()["code_size"] == 4
        before = coll.search(queries, 5, exhaustive(len(base), 5))
        out = coll.recode()  # same dims and codec: the config's default now adds the tail
        assert out["code_size"] == coll.info()["code_size"] == 4 + 2
        assert coll.info()["format_version"] == FORMAT_VERSION
        after = coll.search(queries, 5, exhaustive(len(base), 5))
    np.testing.assert_array_equal(after.ids, before.ids)  # exhaustive: exact either way
    marker = json.loads((tmp_path / "c" / "ANNS_COLLECTION").read_text())
    assert marker["format_version"] == FORMAT_VERSION
    with anns.Collection.open(tmp_path / "c") as coll:  # reopens with its tail codec
        assert coll.info()["format_version"] == FORMAT_VERSION
        assert coll.info()["code_size"] == 6

def test_registering_a_model_upgrades_a_format_1_collection_to_the_current_format(
    v1: Path, expected: dict[str, np.ndarray]
) -> None:
    vectors, queries = expected["vectors"], expected["queries"]
    rng = np.random.default_rng(3)
    rotation, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    # the new model: a rotation of the old one, slightly noisy
    new = (vectors @ rotation + 0.01 * rng.standard_normal(vectors.shape)).astype(np.float32)
    with anns.Collection.open(v1) as coll:
        coll.add_model("v2", vectors, new, current=False)
        assert coll.info()["format_version"] == FORMAT_VERSION
        # the base model answers exactly as format 1 did
        result = coll.search(queries, 5, RECORDED)
        np.testing.assert_array_equal(result.ids, expected["ids"])
        # queries of the new model find the same neighbours among the old vectors
        mapped = (queries @ rotation).astype(np.float32)
        by_new = coll.search(mapped, 5, RECORDED, model="v2")
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(by_new.ids, expected["ids"])])
        assert overlap >= 0.9
    marker = json.loads((v1 / "ANNS_COLLECTION").read_text())
    assert marker["format_version"] == FORMAT_VERSION
    with anns.Collection.open(v1) as coll:  # and it reopens in that format, both models intact
        assert coll.info()["format_version"] == FORMAT_VERSION
        models = coll.models()
        assert models["current"] == "default" and set(models["versions"]) == {"default", "v2"}
        assert models["versions"]["default"]["count"] == 300
        assert models["versions"]["v2"]["count"] == 0 and models["versions"]["v2"]["dim"] == 16
        np.testing.assert_array_equal(coll.search(queries, 5, RECORDED).ids, expected["ids"])
