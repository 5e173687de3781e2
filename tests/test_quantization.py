"""Codecs: SQ8, flat and OPQ encode/decode, and the faiss scan over fetched postings."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import strategies as S
from anns.errors import CorruptCollectionError
from anns.evaluation import clustered_data
from anns.quantization import (
    TAIL_RESERVE,
    TAIL_RESERVE_MIN,
    Codec,
    FlatCodec,
    OPQCodec,
    SQ8Codec,
    TailCodec,
    load_codec,
    make_codec,
)


def _trained(name: str, x: np.ndarray, metric: str = "l2") -> Codec:
    codec = make_codec(name, x.shape[1], metric)  # type: ignore[arg-type]
    codec.train(x)
    return codec


def _scores(queries: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    q, x = queries.astype(np.float64), x.astype(np.float64)
    if metric == "l2":
        return ((q[:, None, :] - x[None]) ** 2).sum(-1)
    return q @ x.T


# -------------------------------------------------------------------------------- SQ8
@given(S.float_matrices(max_rows=40, max_dim=12, elements=st.floats(-1e4, 1e4, width=32)))
def test_sq8_round_trip_error_is_at_most_half_a_step(x: np.ndarray) -> None:
    codec = _trained("sq8", x)
    codes = codec.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (len(x), codec.code_size)
    assert codec.code_size == x.shape[1]
    step = (x.max(0).astype(np.float64) - x.min(0)) / 255
    err = np.abs(codec.decode(codes).astype(np.float64) - x)
    assert (err <= 0.5 * step * (1 + 1e-3) + 1e-6 * (1 + np.abs(x))).all()


def test_sq8_clamps_values_outside_the_trained_range() -> None:
    x = S.gaussian(0, 100, 4)
    codec = _trained("sq8", x)
    far = x * 10
    step = (x.max(0) - x.min(0)) / 255
    clamped = np.clip(far, x.min(0), x.max(0))
    assert (np.abs(codec.decode(codec.encode(far)) - clamped) <= 0.5 * step * 1.001 + 1e-6).all()


def test_sq8_codes_survive_serialisation() -> None:
    x = S.gaussian(3, 200, 9)
    codec = _trained("sq8", x)
    back = load_codec("sq8", 9, "l2", codec.to_bytes())
    assert isinstance(back, SQ8Codec) and back.is_trained
    np.testing.assert_array_equal(back.encode(x), codec.encode(x))
    np.testing.assert_array_equal(back.decode(codec.encode(x)), codec.decode(codec.encode(x)))


def test_untrained_sq8_says_so() -> None:
    assert not make_codec("sq8", 4, "l2").is_trained
    assert make_codec("flat", 4, "l2").is_trained


# ------------------------------------------------------------------------------- flat
@given(S.float_matrices())
def test_flat_codec_is_exact(x: np.ndarray) -> None:
    codec = _trained("flat", x)
    codes = codec.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (len(x), 4 * x.shape[1])
    np.testing.assert_array_equal(codec.decode(codes), x)
    assert isinstance(load_codec("flat", x.shape[1], "l2", codec.to_bytes()), FlatCodec)


@pytest.mark.parametrize("name", ["sq8", "flat", "opq"])
def test_encode_and_decode_of_zero_vectors(name: str) -> None:
    codec = _trained(name, S.gaussian(0, 50, 4))
    codes = codec.encode(np.empty((0, 4), np.float32))
    assert codes.shape == (0, codec.code_size) and codes.dtype == np.uint8
    assert codec.decode(codes).shape == (0, 4)


# ------------------------------------------------------------------------------- scan
# opq: the default pq_m is capped at dim 6, so its rotation is square and orthonormal and
# the ADC scores equal those of the decoded vectors in the original space
@pytest.mark.parametrize("name", ["sq8", "flat", "opq"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, lists=st.integers(1, 6), probe=st.integers(1, 6), k=st.integers(1, 30))
def test_scan_scores_the_decoded_vectors_of_assigned_lists(
    name: str, metric: str, seed: int, lists: int, probe: int, k: int
) -> None:
    rng = np.random.default_rng(seed)
    dim = 6
    sizes = rng.integers(0, 12, lists)
    x = S.gaussian(seed, int(sizes.sum()) + 1, dim)[: int(sizes.sum())]
    codec = _trained(name, S.gaussian(seed + 1, 100, dim), metric)
    ids = rng.permutation(10_000)[: len(x)].astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    codes = codec.encode(x) if len(x) else np.empty((0, codec.code_size), np.uint8)
    posting = [(ids[a:b].copy(), codes[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    queries = S.gaussian(seed + 2, 5, dim)
    assign = np.full((5, probe), -1, np.int64)
    for row in range(5):  # each query probes a random subset of the lists
        chosen = rng.permutation(lists)[: rng.integers(1, min(probe, lists) + 1)]
        assign[row, : len(chosen)] = chosen
    distances, labels = codec.scan(queries, posting, assign, k)
    assert distances.shape == labels.shape == (5, k)
    decoded = codec.decode(codes)
    all_scores = _scores(queries, decoded, metric) if len(x) else np.empty((5, 0))
    for row in range(5):
        lists_probed = assign[row][assign[row] >= 0]
        rows = np.concatenate([np.arange(bounds[j], bounds[j + 1]) for j in lists_probed])
        rows = rows.astype(np.int64)
        mine = all_scores[row, rows]
        want = (np.sort(mine) if metric == "l2" else -np.sort(-mine))[:k]
        got_ids = labels[row][labels[row] >= 0]
        assert len(got_ids) == len(want), "fewer candidates than the probed lists hold"
        assert set(got_ids.tolist()) <= set(ids[rows].tolist()), "an id from an unprobed list"
        scale = 1 + np.abs(want).max(initial=0)
        np.testing.assert_allclose(distances[row, : len(want)], want, rtol=1e-4, atol=1e-4 * scale)
        # each returned id carries the score of its own decoded vector
        pos = {int(i): r for r, i in enumerate(ids.tolist())}
        own = np.array([all_scores[row, pos[int(i)]] for i in got_ids])
        np.testing.assert_allclose(
            distances[row, : len(got_ids)], own, rtol=1e-4, atol=1e-4 * scale
        )
        assert (labels[row][len(want):] == -1).all()


def test_flat_scan_is_exact_brute_force() -> None:
    x = S.gaussian(5, 60, 8)
    queries = S.gaussian(6, 4, 8)
    codec = _trained("flat", x)
    ids = np.arange(60, dtype=np.int64) + 100
    lists = [(ids[:30].copy(), codec.encode(x[:30])), (ids[30:].copy(), codec.encode(x[30:]))]
    distances, labels = codec.scan(queries, lists, np.array([[0, 1]] * 4, np.int64), 10)
    truth = _scores(queries, x, "l2")
    np.testing.assert_array_equal(labels, np.argsort(truth, axis=1)[:, :10] + 100)
    np.testing.assert_allclose(distances, np.sort(truth, axis=1)[:, :10], rtol=1e-5)


def test_scan_with_more_probes_than_lists() -> None:
    # faiss clamps nprobe to nlist: assignment rows must still be read correctly
    x = S.gaussian(7, 10, 4)
    codec = _trained("flat", x)
    lists = [(np.arange(10, dtype=np.int64), codec.encode(x))]
    assign = np.array([[0, -1, -1, -1]], np.int64)
    _, labels = codec.scan(x[:1], lists, assign, 3)
    assert labels[0, 0] == 0


# -------------------------------------------------------------------------------- OPQ
def _opq(x: np.ndarray, m: int, metric: str = "l2") -> OPQCodec:
    codec = make_codec("opq", x.shape[1], metric, m)  # type: ignore[arg-type]
    assert isinstance(codec, OPQCodec)
    codec.train(x)
    return codec


def _scan_all(codec: Codec, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """ADC scores [q, n] of every query against every code (one list, ids = row numbers),
    put back in row order."""
    n = len(codes)
    lists = [(np.arange(n, dtype=np.int64), np.ascontiguousarray(codes))]
    distances, labels = codec.scan(queries, lists, np.zeros((len(queries), 1), np.int64), n)
    assert (labels >= 0).all() and (np.sort(labels, axis=1) == np.arange(n)).all()
    out = np.empty((len(queries), n))
    np.put_along_axis(out, labels, distances.astype(np.float64), axis=1)
    return out


@pytest.mark.parametrize(("dim", "m"), [(8, 2), (12, 4), (10, 4), (6, 64)])
def test_opq_codes_survive_serialisation(dim: int, m: int) -> None:
    x = S.gaussian(3, 300, dim)
    codec = _opq(x, m)
    back = load_codec("opq", dim, "l2", codec.to_bytes())
    assert isinstance(back, OPQCodec) and back.is_trained
    assert (back.m, back.nbits, back.code_size, back.d_out) == (
        codec.m, codec.nbits, codec.code_size, codec.d_out
    )
    codes = codec.encode(x)
    np.testing.assert_array_equal(back.encode(x), codes)
    np.testing.assert_array_equal(back.decode(codes), codec.decode(codes))
    queries = S.gaussian(4, 5, dim)
    np.testing.assert_array_equal(_scan_all(back, queries, codes), _scan_all(codec, queries, codes))


@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, dim=st.integers(2, 12), m=st.integers(1, 12), n=st.integers(12, 300))
def test_opq_adc_scores_the_rotated_query_against_the_rotated_reconstruction(
    metric: str, seed: int, dim: int, m: int, n: int
) -> None:
    # any pq_m, dividing dim or not: the scan is exact arithmetic in the OPQ output space
    x = S.gaussian(seed, n, dim, shift=0.5)
    codec = _opq(x, m, metric)
    assert codec.d_out == codec.m * (dim // codec.m) <= dim
    codes = codec.encode(x[:40])
    assert codes.shape == (len(codes), codec.code_size) and codes.dtype == np.uint8
    queries = S.gaussian(seed + 1, 4, dim)
    rotated_q = codec._scan_queries(queries)
    assert codec._opq is not None
    rotated_x = codec._opq.apply(codec.decode(codes))
    assert rotated_q.shape == (4, codec.d_out) and rotated_x.shape == (len(codes), codec.d_out)
    want = _scores(rotated_q, rotated_x, metric)
    scale = 1 + np.abs(want).max()
    np.testing.assert_allclose(_scan_all(codec, queries, codes), want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, shape=st.sampled_from([(8, 1), (8, 2), (8, 4), (12, 3), (12, 6), (6, 6)]))
def test_opq_adc_equals_scores_of_decoded_vectors_when_pq_m_divides_dim(
    metric: str, seed: int, shape: tuple[int, int]
) -> None:
    # d_out == dim: the OPQ matrix is a rotation, so no distance changes through it
    dim, m = shape
    x = S.gaussian(seed, 200, dim)
    codec = _opq(x, m, metric)
    assert codec.d_out == dim
    codes = codec.encode(x[:30])
    queries = S.gaussian(seed + 1, 4, dim)
    want = _scores(queries, codec.decode(codes), metric)
    scale = 1 + np.abs(want).max()
    np.testing.assert_allclose(_scan_all(codec, queries, codes), want, rtol=1e-4, atol=1e-4 * scale)


@given(seed=S.seeds, shape=st.sampled_from([(10, 4), (7, 2), (11, 3), (9, 5), (5, 3)]))
def test_opq_with_pq_m_not_dividing_dim_projects_onto_a_multiple_of_it(
    seed: int, shape: tuple[int, int]
) -> None:
    dim, m = shape
    x = S.gaussian(seed, 200, dim)
    codec = _opq(x, m)
    assert codec.m == m and codec.d_out == m * (dim // m) < dim
    codes = codec.encode(x)
    assert codes.shape == (200, codec.code_size) and codec.code_size == m
    assert codec.decode(codes).shape == (200, dim)
    # ADC l2 is the original-space distance to the decoded vector less the part of the query
    # outside the projection (the same for every code: rankings are unchanged); ip is exact
    assert codec._opq is not None
    queries = S.gaussian(seed + 1, 4, dim)
    outside = queries - codec._opq.reverse_transform(codec._opq.apply(queries))
    offset = (outside.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
    want = _scores(queries, codec.decode(codes), "l2") - offset
    scale = 1 + np.abs(want).max()
    np.testing.assert_allclose(_scan_all(codec, queries, codes), want, rtol=1e-4, atol=1e-4 * scale)
    ip = _opq(x, m, "ip")
    want_ip = _scores(queries, ip.decode(ip.encode(x)), "ip")
    scale = 1 + np.abs(want_ip).max()
    np.testing.assert_allclose(
        _scan_all(ip, queries, ip.encode(x)), want_ip, rtol=1e-4, atol=1e-4 * scale
    )


@pytest.mark.parametrize(("dim", "m"), [(6, 64), (6, 7), (3, 4096), (4, 4)])
def test_opq_pq_m_larger_than_dim_is_capped_at_dim(dim: int, m: int) -> None:
    codec = make_codec("opq", dim, "l2", m)
    assert isinstance(codec, OPQCodec)
    assert codec.m == dim and codec.d_out == dim and codec.code_size == dim
    assert not codec.is_trained
    x = S.gaussian(0, 300, dim)
    codec.train(x)
    assert codec.is_trained and codec.nbits == 8 and codec.code_size == dim
    assert codec.encode(x).shape == (300, dim)


@pytest.mark.parametrize(("n", "nbits"), [(12, 3), (40, 5), (100, 6), (255, 7), (256, 8)])
def test_a_small_opq_training_set_trains_fewer_bits_and_still_round_trips(
    n: int, nbits: int
) -> None:
    dim, m = 8, 4
    x = S.gaussian(n, n, dim)
    codec = _opq(x, m)
    assert codec.nbits == nbits  # 2^nbits <= n: k-means gets a point per centroid
    assert codec.code_size == -(-m * nbits // 8)
    codes = codec.encode(x)
    assert codes.shape == (n, codec.code_size)
    back = load_codec("opq", dim, "l2", codec.to_bytes())
    assert back.code_size == codec.code_size
    np.testing.assert_array_equal(back.encode(x), codes)
    np.testing.assert_array_equal(back.decode(codes), codec.decode(codes))
    # and the scan reads codes of that size
    queries = S.gaussian(n + 1, 3, dim)
    want = _scores(queries, codec.decode(codes), "l2")
    np.testing.assert_allclose(
        _scan_all(back, queries, codes), want, rtol=1e-4, atol=1e-4 * (1 + want.max())
    )


@pytest.mark.parametrize("m", [4, 8])
def test_opq_reconstruction_error_is_far_below_the_data_variance(m: int) -> None:
    x, _ = clustered_data(1000, 16, seed=7)
    codec = _opq(x, m)
    err = ((codec.decode(codec.encode(x)).astype(np.float64) - x) ** 2).sum(axis=1).mean()
    variance = ((x - x.mean(axis=0)) ** 2).sum(axis=1).mean()
    assert err < 0.05 * variance, f"reconstruction error {err:.3f}, variance {variance:.3f}"
    # more bytes per code: more exact
    if m == 8:
        coarse = _opq(x, 2)
        coarse_err = ((coarse.decode(coarse.encode(x)) - x) ** 2).sum(axis=1).mean()
        assert err < coarse_err


def test_untrained_opq_says_so_and_refuses_to_encode() -> None:
    codec = make_codec("opq", 4, "l2", 2)
    assert not codec.is_trained
    with pytest.raises(RuntimeError, match="before train"):
        codec.encode(S.gaussian(0, 3, 4))


def test_opq_trains_on_a_single_vector() -> None:
    codec = _opq(S.gaussian(0, 1, 4), 2)
    assert codec.is_trained


_FEW_VECTORS = textwrap.dedent(
    """
    import numpy as np
    from anns.quantization import load_codec, make_codec
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    codec = make_codec("opq", 6, "l2", 6)
    codec.train(x)
    codes = codec.encode(x)
    back = load_codec("opq", 6, "l2", codec.to_bytes())
    assert np.array_equal(back.encode(x), codes)
    print("round trip", codes.shape)
    """
)


def test_opq_trains_on_fewer_vectors_than_dims() -> None:
    # in a subprocess: the failure is a heap overflow that kills (or silently corrupts) it
    done = subprocess.run(
        [sys.executable, "-c", _FEW_VECTORS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    assert "round trip (3, 1)" in done.stdout


# ------------------------------------------------------------------------- tail norms
def _tailed(name: str, x: np.ndarray, d_scan: int, metric: str = "l2") -> TailCodec:
    codec = make_codec(name, d_scan, metric, 4,  # type: ignore[arg-type]
                       full_dim=x.shape[1], tail_norms=True)
    assert isinstance(codec, TailCodec)
    codec.train(x)
    return codec


def _tail_estimate(codec: TailCodec, queries: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What the tail codec adds to the prefix score of each (query, vector) pair."""
    d, full = codec.dim, codec.full_dim
    q_tail = np.linalg.norm(queries[:, d:full].astype(np.float64), axis=1)[:, None]
    x_tail = np.linalg.norm(x[:, d:full].astype(np.float64), axis=1)[None, :]
    if codec.metric == "l2":
        return x_tail * (x_tail - 2 * codec.rho * q_tail)
    return codec.rho * q_tail * x_tail


def test_tail_codes_hold_the_prefix_code_and_the_tail_norm() -> None:
    x = S.gaussian(1, 300, 12) * np.linspace(2, 0.1, 12, dtype=np.float32)
    codec = _tailed("opq", x, 5)
    codes = codec.encode(x)
    assert codes.shape == (300, codec.inner.code_size + 2) and codec.code_size == 6
    np.testing.assert_array_equal(codes[:, :4], codec.inner.encode(x))
    stored = np.ascontiguousarray(codes[:, 4:]).view("<f2")[:, 0].astype(np.float64)
    np.testing.assert_allclose(stored * codec.scale, np.linalg.norm(x[:, 5:], axis=1),
                               rtol=1e-3)
    # decode is the inner codec's reconstruction of the prefix
    np.testing.assert_array_equal(codec.decode(codes), codec.inner.decode(codes[:, :4]))
    assert codec.decode(codes).shape == (300, 5)


def test_no_tail_without_dims_beyond_the_prefix_or_for_unit_vectors() -> None:
    assert isinstance(make_codec("opq", 8, "l2", 4, full_dim=8, tail_norms=True), OPQCodec)
    assert isinstance(make_codec("sq8", 6, "l2", full_dim=8, tail_norms=False), SQ8Codec)
    # a unit vector's tail norm follows from its prefix: nothing to store
    assert isinstance(make_codec("opq", 6, "cosine", 2, full_dim=8, tail_norms=True), OPQCodec)
    assert isinstance(make_codec("opq", 6, "ip", 2, full_dim=8, tail_norms=True), TailCodec)


@pytest.mark.parametrize("name", ["sq8", "opq"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@given(seed=S.seeds, lists=st.integers(1, 5), k=st.integers(1, 40))
def test_tail_scan_keeps_the_prefix_candidates_and_orders_them_by_the_estimate(
    name: str, metric: str, seed: int, lists: int, k: int
) -> None:
    rng = np.random.default_rng(seed)
    dim, d_scan = 10, 4
    decay = np.linspace(1.5, 0.3, dim, dtype=np.float32)
    codec = _tailed(name, S.gaussian(seed + 1, 200, dim) * decay, d_scan, metric)
    sizes = rng.integers(0, 15, lists)
    x = S.gaussian(seed, int(sizes.sum()), dim) * decay
    ids = rng.permutation(10_000)[: len(x)].astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    codes = codec.encode(x) if len(x) else np.empty((0, codec.code_size), np.uint8)
    # an empty posting comes from the read path as codes of shape (0, 0)
    posting = [(ids[a:b].copy(), codes[a:b] if b > a else np.empty((0, 0), np.uint8))
               for a, b in zip(bounds[:-1], bounds[1:])]
    queries = S.gaussian(seed + 2, 3, dim) * decay
    assign = np.tile(np.arange(lists), (3, 1))
    got_scores, got = codec.scan(queries, posting, assign, k)
    bare = posting_without_tails(posting, codec)
    _, want = codec.inner.scan(queries, bare, assign, k)
    assert got.shape == (3, k)
    estimate = _tail_estimate(codec, queries, x)
    prefix_scores = _scores(queries[:, :d_scan], codec.decode(codes), metric) if len(x) else None
    pos = {int(i): r for r, i in enumerate(ids.tolist())}
    reserve = min(k, max(TAIL_RESERVE_MIN, k // TAIL_RESERVE))
    for row in range(3):
        # the same candidates as the prefix codes alone: only their order changes
        assert sorted(got[row].tolist()) == sorted(want[row].tolist())
        # the prefix's best few first, the rest by prefix score + the tail estimate
        assert got[row, :reserve].tolist() == want[row, :reserve].tolist()
        real = got[row][got[row] >= 0]
        if not len(real):
            continue
        at = np.array([pos[int(i)] for i in real])
        expect = prefix_scores[row, at] + estimate[row, at]  # type: ignore[index]
        scale = 1 + np.abs(expect).max()
        np.testing.assert_allclose(got_scores[row, : len(real)], expect, rtol=2e-3,
                                   atol=2e-3 * scale)
        rest = got_scores[row, reserve : len(real)]
        assert (np.diff(rest) >= -1e-5 * scale).all() if metric == "l2" else (
            np.diff(rest) <= 1e-5 * scale).all()


def posting_without_tails(
    posting: list[tuple[np.ndarray, np.ndarray]], codec: TailCodec
) -> list[tuple[np.ndarray, np.ndarray]]:
    size = codec.inner.code_size
    return [(ids, np.ascontiguousarray(codes[:, :size])) for ids, codes in posting]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_tail_codecs_survive_serialisation(metric: str) -> None:
    x = S.gaussian(5, 400, 16) * np.linspace(2, 0.2, 16, dtype=np.float32)
    codec = _tailed("opq", x, 8, metric)
    back = load_codec("opq", 8, metric, codec.to_bytes())  # type: ignore[arg-type]
    assert isinstance(back, TailCodec)
    assert (back.full_dim, back.rho, back.scale) == (codec.full_dim, codec.rho, codec.scale)
    np.testing.assert_array_equal(back.encode(x), codec.encode(x))
    posting = [(np.arange(400, dtype=np.int64), codec.encode(x))]
    assign = np.zeros((4, 1), dtype=np.int64)
    for a, b in zip(codec.scan(x[:4], posting, assign, 20), back.scan(x[:4], posting, assign, 20)):
        np.testing.assert_array_equal(a, b)
    # the blob says how many dims the tail ends at: another collection dim is corruption
    with pytest.raises(CorruptCollectionError, match="tail ends at dim 16"):
        load_codec("opq", 8, metric, codec.to_bytes(), full_dim=24)  # type: ignore[arg-type]


def _tail_data(seed: int, related: bool) -> np.ndarray:
    """Clustered 8-dim prefixes; tails either a fixed function of the prefix (neighbours'
    tails point the same way) or independent noise of the same size."""
    head, _ = clustered_data(3000, 8, spread=0.3, seed=seed)
    rng = np.random.default_rng(seed)
    if related:
        tail = head @ rng.standard_normal((8, 8)).astype(np.float32) * 0.4
    else:
        tail = rng.standard_normal((3000, 8)).astype(np.float32) * 1.1
    return np.ascontiguousarray(np.hstack([head, tail]), dtype=np.float32)


def test_rho_is_fitted_to_how_neighbours_tails_relate() -> None:
    # true neighbours are chosen on their tails too, so even unrelated tails correlate among
    # them; tails that follow the prefix correlate more
    related = _tailed("sq8", _tail_data(3, related=True), 8)
    unrelated = _tailed("sq8", _tail_data(3, related=False), 8)
    assert related.rho >= 0.6, related.rho
    assert related.rho > unrelated.rho, (related.rho, unrelated.rho)
