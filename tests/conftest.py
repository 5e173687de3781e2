"""Shared fixtures: small deterministic datasets that are still hard to index."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from anns.evaluation import clustered_data

settings.register_profile(
    "fast", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="session")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """(base float32 [4000, 32], queries float32 [100, 32]) of overlapping Gaussian clusters."""
    return clustered_data(4000, 32, queries=100, seed=7)
