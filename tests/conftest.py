"""Shared fixtures: small deterministic datasets that are still hard to index."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import anns
from anns.evaluation import clustered_data

# fast: CI and `make test`, derandomized so a run is repeatable (a found failure is found
# every time, never by luck); slow: HYPOTHESIS_PROFILE=slow, random and 200 examples
settings.register_profile(
    "fast", max_examples=15, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "slow", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# The test data are tiny: OpenMP teams in faiss only add fork/join and spin-wait costs there,
# and on a shared 2-core machine those waits make k-means and scans several times slower.
# Searches from several Python threads still run concurrently (faiss releases the GIL).
faiss.omp_set_num_threads(int(os.environ.get("ANNS_TEST_OMP_THREADS", "1")))

#: Small postings so that a few hundred vectors already make dozens of postings, replicas
#: and (on insert) splits.
SMALL_CONFIG = {"posting_size": 16, "max_posting_size": 32}


@pytest.fixture(scope="session")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """(base float32 [4000, 32], queries float32 [100, 32]) of overlapping Gaussian clusters."""
    return clustered_data(4000, 32, queries=100, seed=7)


@pytest.fixture(scope="session")
def small() -> tuple[np.ndarray, np.ndarray]:
    """(base float32 [600, 8], queries float32 [20, 8]): Gaussian floats, so no distance ties."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal((600, 8)).astype(np.float32)
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    return base, queries


@pytest.fixture(scope="session")
def built_small(
    tmp_path_factory: pytest.TempPathFactory, small: tuple[np.ndarray, np.ndarray]
) -> Path:
    """A collection bulk-built from ``small`` with SMALL_CONFIG; tests must not modify it."""
    path = tmp_path_factory.mktemp("built") / "small"
    anns.build(path, small[0], config=SMALL_CONFIG)
    return path


@pytest.fixture
def coll(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> Iterator[anns.Collection]:
    """An open, writable collection built from ``small`` (ids 0..599), private to the test."""
    anns.build(tmp_path / "coll", small[0], config=SMALL_CONFIG)
    collection = anns.Collection.open(tmp_path / "coll")
    yield collection
    collection.close()
