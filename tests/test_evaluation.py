"""The oracle shared by tests and benchmarks: exact k-NN, recall@k, synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import strategies as S
from anns.evaluation import clustered_data, exact_knn, recall_at, write_dataset
from invariants import brute_force


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@given(data=S.datasets(min_n=5, max_n=200), k=st.integers(1, 20))
def test_exact_knn_is_brute_force(metric: str, data: tuple[np.ndarray, np.ndarray], k: int) -> None:
    base, queries = data
    ids, dist = exact_knn(base, queries, k, metric)  # type: ignore[arg-type]
    want_ids, want = brute_force(base, np.arange(len(base)), queries, k, metric)
    m = min(k, len(base))
    np.testing.assert_allclose(dist, want[:, :m], rtol=1e-4, atol=1e-4)
    # ids must agree except between neighbours whose distances tie within float32 rounding
    # (faiss computes in float32, the oracle in float64)
    differ = ids != want_ids[:, :m]
    tied = np.zeros_like(differ)
    close = np.isclose(want[:, 1:m], want[:, : m - 1], rtol=1e-4, atol=1e-5)
    tied[:, 1:] |= close
    tied[:, :-1] |= close
    assert not (differ & ~tied).any(), (ids, want_ids[:, :m])


def test_recall_at() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at(truth, truth, 3) == 1.0
    assert recall_at(np.array([[3, 9, -1], [-1, -1, -1]]), truth, 3) == pytest.approx(1 / 6)
    assert recall_at(np.array([[2, 1, 7], [4, 8, 8]]), truth, 2) == pytest.approx(3 / 4)


def test_clustered_data_is_deterministic() -> None:
    a, qa = clustered_data(300, 8, queries=10, seed=3)
    b, qb = clustered_data(300, 8, queries=10, seed=3)
    assert a.dtype == np.float32 and a.shape == (300, 8) and qa.shape == (10, 8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(qa, qb)
    assert not np.array_equal(a, clustered_data(300, 8, seed=4)[0])


def test_write_dataset(tmp_path: Path) -> None:
    base, queries = clustered_data(200, 4, queries=5, seed=1)
    write_dataset(tmp_path, base, queries, "ip", name="t")
    gt = np.load(tmp_path / "gt.npy")
    assert gt.dtype == np.int32 and gt.shape == (5, 100)
    np.testing.assert_array_equal(gt, exact_knn(base, queries, 100, "ip")[0])
    assert json.loads((tmp_path / "meta.json").read_text()) == {"metric": "ip", "name": "t"}
