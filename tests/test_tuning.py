"""Tuned search profiles: ``Collection.tune`` / ``anns tune`` and ``target_recall`` searches."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import anns
from anns import (
    DimensionMismatchError,
    EmptyCollectionError,
    FailedPreconditionError,
    InvalidArgumentError,
    NonFiniteError,
    SearchParams,
    StorageConfig,
)
from anns.cli import main, to_json
from anns.evaluation import exact_knn, recall_at
from anns.tuning import Profile, _given, _held_out, profiles_from_json, profiles_to_json
from test_compat import two_models

Data = tuple[np.ndarray, np.ndarray]

#: Small enough to tune in seconds: 3000 x 32, routing on an 8-dim prefix of PCA codes.
CONFIG = {"d_route": 8, "d_scan": 16, "posting_size": 32, "codec": "opq", "pq_m": 8}


@pytest.fixture(scope="module")
def data(clustered: Data) -> Data:
    base, queries = clustered
    return base[:3000], queries


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, data: Data) -> Path:
    """A collection tuned for recall@10 0.9 then 0.8 (the default is the last tuned)."""
    path = tmp_path_factory.mktemp("tuned") / "c"
    anns.build(path, data[0], config=CONFIG)
    with anns.Collection.open(path) as coll:
        coll.tune(0.9, queries=150)
        coll.tune(0.8, queries=150)
    return path


@pytest.fixture
def coll(tuned: Path) -> Iterator[anns.Collection]:
    with anns.Collection.open(tuned, StorageConfig(read_only=True)) as c:
        yield c


def test_a_tuned_profile_meets_its_target_on_queries_it_never_saw(
    coll: anns.Collection, data: Data
) -> None:
    base, queries = data  # the fixture's queries: not stored, not sampled by tune
    truth, _ = exact_knn(base, queries, 10)
    for target in (0.8, 0.9):
        found = coll.search(queries, 10, target_recall=target).ids
        # tune picks by a lower confidence bound, so the held-out recall clears the target
        # up to the sampling error of 100 queries (one standard error, ~0.01-0.02)
        assert recall_at(found, truth, 10) >= target - 0.02, target


def test_tuning_explores_the_stage_dims_and_reports_its_curve(
    tmp_path: Path, data: Data
) -> None:
    anns.build(tmp_path / "c", data[0], config=CONFIG)
    with anns.Collection.open(tmp_path / "c") as c:
        report = c.tune(0.9, queries=100, store=False)
        assert c.profiles() == {}  # store=False
    profile = report.profile
    assert profile.target_recall == 0.9 and profile.k == 10 and profile.queries == 100
    assert profile.d_scan == 16
    assert profile.recall >= 0.9
    assert {p.params["d_rerank"] for p in report.curve} == {32, _energy_prefix(data[0])}
    assert {p.params["d_route"] for p in report.curve} == {8}
    assert {p.params["eps2"] for p in report.curve} >= {0.3, 1.0, float("inf")}
    # the curve is monotone in the posting cap for a fixed shape (recall grows with it)
    shape = {k: v for k, v in profile.params.items() if k != "max_postings"}
    ladder = sorted(
        (p.params["max_postings"], p.recall) for p in report.curve
        if {k: v for k, v in p.params.items() if k != "max_postings"} == shape
    )
    assert all(r1 <= r2 + 1e-9 for (_, r1), (_, r2) in zip(ladder, ladder[1:]))
    assert report.truth_seconds > 0 and report.seconds >= report.truth_seconds
    assert json.loads(json.dumps(report.to_dict()))["profile"]["params"] == profile.params


def _energy_prefix(base: np.ndarray) -> int:
    """The shortest PCA prefix of ``base`` keeping 99.9% of the centred energy."""
    centred = base.astype(np.float64) - base.mean(axis=0)
    energy = np.cumsum(np.linalg.eigvalsh(centred.T @ centred)[::-1])
    return int(np.searchsorted(energy, 0.999 * energy[-1]) + 1)


def test_the_last_tuned_profile_is_the_default_and_survives_reopening(
    coll: anns.Collection, data: Data
) -> None:
    profiles = coll.profiles()
    assert sorted(profiles) == [0.8, 0.9]
    default = SearchParams(**profiles[0.8]["params"])
    plain = coll.search(data[1], 10, return_stats=True)
    explicit = coll.search(data[1], 10, default, return_stats=True)
    np.testing.assert_array_equal(plain.ids, explicit.ids)
    assert plain.stats is not None and explicit.stats is not None
    assert plain.stats.postings_probed == explicit.stats.postings_probed
    # a keyword knob overrides the default profile's value and keeps the rest of it
    wider = coll.search(data[1], 10, max_postings=default.max_postings + 8, return_stats=True)
    assert wider.stats is not None
    assert wider.stats.postings_probed >= plain.stats.postings_probed


def test_target_recall_takes_the_cheapest_profile_reaching_it(
    coll: anns.Collection, data: Data
) -> None:
    profiles = coll.profiles()
    for target, expected in ((0.5, 0.8), (0.8, 0.8), (0.85, 0.9), (0.9, 0.9)):
        chosen = SearchParams(**profiles[expected]["params"])
        a = coll.search(data[1], 10, target_recall=target, return_stats=True)
        b = coll.search(data[1], 10, chosen, return_stats=True)
        np.testing.assert_array_equal(a.ids, b.ids)
        assert a.stats is not None and b.stats is not None
        assert a.stats.postings_probed == b.stats.postings_probed
    # the same through SearchParams
    c = coll.search(data[1], 10, SearchParams(target_recall=0.85))
    np.testing.assert_array_equal(c.ids, coll.search(data[1], 10, target_recall=0.9).ids)


def test_a_target_no_profile_reaches_names_the_tuned_ones_and_the_command(
    coll: anns.Collection, data: Data
) -> None:
    with pytest.raises(FailedPreconditionError, match=r"0\.95 .*0\.8, 0\.9.*anns tune"):
        coll.search(data[1], 10, target_recall=0.95)


def test_an_untuned_collection_has_no_profiles(tmp_path: Path, data: Data) -> None:
    anns.build(tmp_path / "c", data[0][:500], config={"posting_size": 32})
    with anns.Collection.open(tmp_path / "c") as c:
        assert c.profiles() == {}
        with pytest.raises(FailedPreconditionError, match="tuned targets: none"):
            c.search(data[1], 10, target_recall=0.9)


@pytest.mark.parametrize("target", [0.0, -0.1, 1.01])
def test_tune_refuses_a_target_outside_0_1(coll: anns.Collection, target: float) -> None:
    with pytest.raises(InvalidArgumentError, match="target recall"):
        coll.tune(target, store=False)


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_search_refuses_a_target_recall_outside_0_1(
    coll: anns.Collection, data: Data, target: float
) -> None:
    with pytest.raises(InvalidArgumentError, match="target_recall"):
        coll.search(data[1], 10, target_recall=target)


def test_tune_needs_more_vectors_than_k_and_a_writable_collection(
    tmp_path: Path, data: Data, coll: anns.Collection
) -> None:
    with anns.Collection.create(tmp_path / "empty", anns.IndexConfig(dim=32)) as c:
        with pytest.raises(EmptyCollectionError):
            c.tune(0.9)
        c.add(data[0][:10])
        with pytest.raises(InvalidArgumentError, match="more than 10 stored vectors"):
            c.tune(0.9)
    with pytest.raises(FailedPreconditionError, match="read-only"):
        coll.tune(0.9)  # read-only: storing the profile is refused before measuring


def test_held_out_truth_is_the_exact_neighbours_without_the_query_itself(
    coll: anns.Collection, data: Data
) -> None:
    base = data[0]
    queries, self_ids, truth = _held_out(coll, 40, 10, seed=3)
    assert len(set(self_ids.tolist())) == 40
    # in collection space: the stored vectors themselves, the raw ones through the basis
    np.testing.assert_allclose(coll._require_view().basis.invert(queries), base[self_ids],
                               atol=1e-4)
    dist = ((base[self_ids, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)
    dist[np.arange(40), self_ids] = np.inf
    for row in range(40):
        # ties aside, the 10 ids are the 10 smallest distances other than the query's own
        kth = np.sort(dist[row])[9]
        assert (dist[row, truth[row]] <= kth + 1e-4).all()
        assert self_ids[row] not in truth[row]


def _between(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries unlike any stored vector: midpoints of random pairs (mostly of two clusters)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(base), (2, n))
    noise = rng.standard_normal((n, base.shape[1])).astype(np.float32) * 0.1
    return ((base[a] + base[b]) / 2 + noise).astype(np.float32)


def test_a_profile_tuned_on_given_queries_holds_on_others_of_their_kind(
    tmp_path: Path, data: Data
) -> None:
    base = data[0]
    queries = _between(base, 400, seed=5)
    tuning, unseen = queries[:200], queries[200:]
    truth, _ = exact_knn(base, unseen, 10)
    recall = {}
    for source in ("collection", "given"):
        anns.build(tmp_path / source, base, config=CONFIG)
        with anns.Collection.open(tmp_path / source) as c:
            report = c.tune(0.9, queries=150,
                            query_vectors=tuning if source == "given" else None)
            assert report.profile.source == source
            assert report.profile.queries == 150
            recall[source] = recall_at(c.search(unseen, 10).ids, truth, 10)
    # stored vectors are where the clustering was fitted: tuned on them, a profile falls far
    # short on queries between clusters; tuned on such queries, it holds on unseen ones
    assert recall["given"] >= 0.9 - 0.02, recall
    assert recall["collection"] < recall["given"] - 0.2, recall


def test_given_queries_are_sampled_and_their_truth_is_every_stored_vector(
    coll: anns.Collection, data: Data
) -> None:
    base = data[0]
    given = _between(base, 60, seed=2)
    raw, version, truth = _given(coll, given, 40, 10, seed=3, model=None)
    assert version.name == "default"
    # 40 of the 60 rows, in their order
    rows = [int(np.argmin(((given - r) ** 2).sum(1))) for r in raw]
    assert len(set(rows)) == 40 and rows == sorted(rows)
    np.testing.assert_array_equal(raw, given[rows])
    dist = ((given[rows, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)
    for row in range(40):  # ties aside, the 10 smallest distances over every stored vector
        assert (dist[row, truth[row]] <= np.sort(dist[row])[9] + 1e-4).all()
    same, _, _ = _given(coll, given, 40, 10, seed=3, model=None)
    np.testing.assert_array_equal(same, raw)  # the sample is the seed's
    everything, _, _ = _given(coll, given, 300, 10, seed=3, model=None)
    assert len(everything) == 60


def test_tune_refuses_bad_given_queries_and_keeps_the_stored_profiles(
    tmp_path: Path, data: Data
) -> None:
    anns.build(tmp_path / "c", data[0][:2000], config=CONFIG)
    with anns.Collection.open(tmp_path / "c") as c:
        c.tune(0.8, queries=80)
        before = c.profiles()
        with pytest.raises(DimensionMismatchError, match="tuning query dim 31"):
            c.tune(0.9, query_vectors=data[1][:, :31], d_scans=[8, 16])
        bad = data[1].copy()
        bad[97, 3] = np.nan
        with pytest.raises(NonFiniteError, match="tuning queries hold NaN.*first at row 97"):
            c.tune(0.9, query_vectors=bad, d_scans=[8, 16])
        # sampled: the row is named by its number in the input, not in the sample (seed 0
        # leaves out row 83 of the 100, so row 97 is the sample's 96th)
        with pytest.raises(NonFiniteError, match="first at row 97"):
            c.tune(0.9, queries=99, query_vectors=bad)
        for empty in (np.empty((0, 32), np.float32), []):
            with pytest.raises(InvalidArgumentError, match="no tuning queries"):
                c.tune(0.9, query_vectors=empty)
        for bad_arg, error in (({"k": 2.5}, anns.DTypeError), ({"queries": 2.5}, None),
                               ({"queries": 0}, None), ({"k": 0}, None)):
            with pytest.raises(error or InvalidArgumentError, match="k must|queries must"):
                c.tune(0.9, **bad_arg)
        with pytest.raises(InvalidArgumentError, match="target recall must be a number"):
            c.tune("0.9")
        with pytest.raises(InvalidArgumentError, match="none were given"):
            c.tune(0.9, model="default")
        assert c.profiles() == before
        assert c._require_view().d_scan == CONFIG["d_scan"]  # no re-encoding either


def test_given_queries_of_a_model_version_are_measured_as_its_searches_run(
    tmp_path: Path,
) -> None:
    # half the collection backfilled by a model with extra dims: its searches rerank its own
    # vectors on all their dims and the old ones calibrated, and so must the tuning's truth
    old, new, _ = two_models(2600, seed=5)
    with anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=32, posting_size=32)) as c:
        c.add(old[:2400], np.arange(2400))
        c.add_model("v2", old[:800], new[:800])
        c.backfill("v2", new[:1200], np.arange(1200), progress=False)
        queries = new[2400:2500]
        report = c.tune(0.9, queries=100, query_vectors=queries, model="v2", store=False)
        assert report.profile.source == "given" and report.profile.queries == 100
        found = c.search(queries, 10, report.profile.search_params(), model="v2").ids
        truth = c.search(queries, 10, model="v2", max_postings=10000, eps2=math.inf,
                         refine_factor=1000).ids  # every vector, scored by the rerank
        assert recall_at(found, truth, 10) == pytest.approx(report.profile.recall, abs=1e-4)
        assert report.profile.recall >= 0.9
        with pytest.raises(DimensionMismatchError, match="does not match model 'v2' dim 48"):
            c.tune(0.9, query_vectors=old[2400:])  # the current model is v2
        with pytest.raises(anns.NotFoundError, match="'gone' is not registered"):
            c.tune(0.9, query_vectors=queries, model="gone")


def test_a_failed_tune_over_d_scans_leaves_the_codes_and_profiles_as_they_were(
    tmp_path: Path, data: Data
) -> None:
    anns.build(tmp_path / "c", data[0][:2000], config=CONFIG)
    with anns.Collection.open(tmp_path / "c") as c:
        c.tune(0.8, queries=80)
        before, info = c.profiles(), c.info()
        with pytest.raises(InvalidArgumentError, match="no setting reaches recall@1 1.0"):
            c.tune(1.0, k=1, queries=100, query_vectors=_between(data[0], 100, seed=4),
                   d_scans=[8, 24])
        assert c.profiles() == before
        assert c._require_view().d_scan == CONFIG["d_scan"]
        assert c.info()["code_size"] == info["code_size"]
        # a d_scans tune that ends on the codes the profiles were measured on keeps them
        report = c.tune(0.7, queries=80, d_scans=[CONFIG["d_scan"]])
        assert set(c.profiles()) == {0.7, 0.8} and report.profile.d_scan == CONFIG["d_scan"]


def test_profiles_keep_their_query_source_where_older_versions_read_them() -> None:
    given = Profile(0.9, {"max_postings": 8}, 0.93, 1000.0, "batch", 300, 10, 16, "given")
    held_out = Profile(0.8, {"max_postings": 4}, 0.83, 2000.0, "batch", 300, 10, 16)
    blob = json.loads(profiles_to_json({0.9: given, 0.8: held_out}, 0.9))
    # versions before `source` refused a profile holding a key they did not know: it is
    # stored beside the profiles, which hold exactly the fields those versions had
    before = {f.name for f in dataclasses.fields(Profile)} - {"source"}
    assert all(set(p) == before for p in blob["profiles"].values())
    assert blob["sources"] == {"0.9": "given"}
    blob["profiles"]["0.9"]["added_later"] = 1  # a later version's key
    loaded = profiles_from_json(json.dumps(blob).encode())
    assert loaded == {0.9: given, 0.8: held_out}
    del blob["sources"]  # what those versions stored
    assert profiles_from_json(json.dumps(blob).encode())[0.9].source == "collection"


def test_cli_tune_prints_the_profile_and_dry_run_stores_nothing(
    tmp_path: Path, data: Data, capsys: pytest.CaptureFixture[str]
) -> None:
    anns.build(tmp_path / "c", data[0][:2000], config=CONFIG)
    code = main(["tune", str(tmp_path / "c"), "--recall", "0.85", "--queries", "80",
                 "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = json.loads(out, parse_constant=_not_json)  # an eps2 of inf too: strict JSON
    assert printed["stored"] is False
    assert printed["target_recall"] == 0.85 and "max_postings" in printed["params"]
    assert "max_postings" in err  # the curve table
    with anns.Collection.open(tmp_path / "c") as c:
        assert c.profiles() == {}
    code = main(["tune", str(tmp_path / "c"), "--recall", "0.85", "--queries", "80"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["stored"] is True
    with anns.Collection.open(tmp_path / "c") as c:
        assert list(c.profiles()) == [0.85]
    code = main(["tune", str(tmp_path / "c"), "--recall", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and "target recall must be in (0, 1]" in err and out == ""
    np.save(tmp_path / "q.npy", data[1])
    code = main(["tune", str(tmp_path / "c"), "--recall", "0.8", "--queries", "60",
                 "--query-vectors", str(tmp_path / "q.npy")])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = json.loads(out)
    assert printed["source"] == "given" and printed["queries"] == 60
    with anns.Collection.open(tmp_path / "c") as c:
        assert c.profiles()[0.8]["source"] == "given"
    np.save(tmp_path / "q.npy", data[1][:, :16])
    code = main(["tune", str(tmp_path / "c"), "--recall", "0.8",
                 "--query-vectors", str(tmp_path / "q.npy")])
    out, err = capsys.readouterr()
    assert code == 1 and "tuning query dim 16 does not match collection dim 32" in err
    code = main(["tune", str(tmp_path / "c"), "--recall", "0.8", "--model", "default"])
    out, err = capsys.readouterr()
    assert code == 1 and "give --query-vectors FILE too" in err


def test_tune_output_is_strict_json_that_search_params_read_back() -> None:
    printed = json.loads(to_json({"eps2": math.inf, "recall": 0.9, "x": [1.0, -math.inf]}),
                         parse_constant=_not_json)
    assert printed == {"eps2": "inf", "recall": 0.9, "x": [1.0, "-inf"]}
    assert SearchParams(eps2=printed["eps2"]).eps2 == math.inf


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


# ------------------------------------------------------------------------------ recode
def test_recode_changes_the_codes_and_keeps_every_vector_searchable(
    tmp_path: Path, data: Data
) -> None:
    base, queries = data
    anns.build(tmp_path / "c", base, config=CONFIG)
    truth, _ = exact_knn(base, queries, 10)
    with anns.Collection.open(tmp_path / "c") as c:
        c.tune(0.8, queries=60)
        before = recall_at(c.search(queries, 10, refine_factor=1).ids, truth, 10)
        done = c.recode(d_scan=32, pq_m=16)
        assert done == {"stage_dims": {"d_route": 8, "d_scan": 32, "d_rerank": 32},
                        "codec": "opq", "code_size": 16}
        assert c.profiles() == {}  # measured on the old codes
        after = recall_at(c.search(queries, 10, refine_factor=1).ids, truth, 10)
        assert after > before  # twice the bytes over all dims rank better
        # exhaustive search stays exact: every vector kept a code in every posting
        exhaustive = c.search(queries, 10, max_postings=10_000, eps2=math.inf,
                              refine_factor=1000).ids
        assert recall_at(exhaustive, truth, 10) == 1.0
    with anns.Collection.open(tmp_path / "c") as c:  # durable
        assert c.info()["stage_dims"]["d_scan"] == 32 and c.info()["code_size"] == 16
        assert c.config.d_route == 8  # the centroids' dims, pinned
        np.testing.assert_array_equal(c.search(queries, 10, refine_factor=1).ids,
                                      c.search(queries, 10, refine_factor=1).ids)
        c.recode(codec="sq8")
        assert c.info()["code_size"] == 32
        assert recall_at(c.search(queries, 10).ids, truth, 10) >= 0.9


def test_recode_refuses_what_the_collection_cannot_hold(
    tmp_path: Path, data: Data, coll: anns.Collection
) -> None:
    anns.build(tmp_path / "c", data[0][:1000], config=CONFIG)
    with anns.Collection.open(tmp_path / "c") as c:
        with pytest.raises(InvalidArgumentError, match="d_route 8 is larger than d_scan 4"):
            c.recode(d_scan=4)
        with pytest.raises(InvalidArgumentError, match="d_scan"):
            c.recode(d_scan=33)
        assert c.info()["stage_dims"]["d_scan"] == 16  # unchanged
    with pytest.raises(FailedPreconditionError, match="read-only"):
        coll.recode(d_scan=32)


def test_tune_over_scan_prefixes_keeps_the_winner_at_equal_bytes(
    tmp_path: Path, data: Data
) -> None:
    anns.build(tmp_path / "c", data[0][:2000], config=CONFIG)
    with anns.Collection.open(tmp_path / "c") as c:
        report = c.tune(0.85, queries=80, d_scans=[8, 16, 32])
        assert {p.d_scan for p in report.curve} == {8, 16, 32}
        info = c.info()
        assert info["stage_dims"]["d_scan"] == report.profile.d_scan
        # pq_m bytes whichever prefix won (by measured speed), plus a prefix's tail norm
        tail = 2 if report.profile.d_scan < 32 else 0
        assert info["code_size"] == 8 + tail
        assert list(c.profiles()) == [0.85]
        with pytest.raises(InvalidArgumentError, match="cannot be a dry run"):
            c.tune(0.85, d_scans=[16], store=False)
        with pytest.raises(InvalidArgumentError, match=r"between .* d_route 8 .* got \[4\]"):
            c.tune(0.85, d_scans=[16, 4])
        assert c.info()["stage_dims"]["d_scan"] == report.profile.d_scan
