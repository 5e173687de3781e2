"""Codecs: SQ8 and flat encode/decode, and the faiss scan over fetched postings."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import strategies as S
from anns.quantization import Codec, FlatCodec, SQ8Codec, load_codec, make_codec


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


@pytest.mark.parametrize("name", ["sq8", "flat"])
def test_encode_and_decode_of_zero_vectors(name: str) -> None:
    codec = _trained(name, S.gaussian(0, 50, 4))
    codes = codec.encode(np.empty((0, 4), np.float32))
    assert codes.shape == (0, codec.code_size) and codes.dtype == np.uint8
    assert codec.decode(codes).shape == (0, 4)


# ------------------------------------------------------------------------------- scan
@pytest.mark.parametrize("name", ["sq8", "flat"])
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
