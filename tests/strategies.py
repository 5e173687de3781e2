"""Hypothesis strategies shared by the property tests (chroma ``test/property`` style).

Datasets are drawn as a seed and a shape and then generated with numpy: Gaussian floats have
no distance ties (so exact ids can be compared) and stay cheap to shrink. Where adversarial
values matter (codecs, formats, the validation gate) arrays are drawn element by element.
"""

from __future__ import annotations

from typing import Any

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np

from anns import IndexConfig, SearchParams

metrics = st.sampled_from(["l2", "ip", "cosine"])
seeds = st.integers(min_value=0, max_value=2**32 - 1)
dims = st.integers(min_value=2, max_value=16)
codecs = st.sampled_from(["sq8", "flat", "opq"])

#: Non-negative ids across the whole int64 range (keys are big-endian; -1 is padding).
vector_ids = st.integers(min_value=0, max_value=np.iinfo(np.int64).max)

finite_float32 = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32
)


def gaussian(seed: int, n: int, dim: int, *, shift: float = 0.0) -> np.ndarray:
    """float32 [n, dim] standard normal rows (plus ``shift``) for a seed: tie-free data."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)) + shift).astype(np.float32)


@st.composite
def datasets(
    draw: st.DrawFn, min_n: int = 50, max_n: int = 400, dim: st.SearchStrategy[int] = dims,
    queries: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """(base float32 [n, d], queries float32 [queries, d]) of tie-free Gaussian data."""
    n = draw(st.integers(min_n, max_n))
    d = draw(dim)
    seed = draw(seeds)
    both = gaussian(seed, n + queries, d)
    return both[:n], both[n:]


def id_arrays(n: int) -> st.SearchStrategy[np.ndarray]:
    """int64 [n] of distinct non-negative ids."""
    return st.lists(vector_ids, min_size=n, max_size=n, unique=True).map(
        lambda v: np.array(v, dtype=np.int64)
    )


def float_matrices(
    max_rows: int = 20, max_dim: int = 16, elements: st.SearchStrategy[float] = finite_float32
) -> st.SearchStrategy[np.ndarray]:
    """float32 [n >= 1, d >= 1] drawn element by element (duplicates, zeros, extremes)."""
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_dim))
    return hnp.arrays(np.float32, shapes, elements=elements)


@st.composite
def index_configs(draw: st.DrawFn, dim: int, **fixed: Any) -> IndexConfig:
    """Small IndexConfigs (postings of a handful of vectors, so replicas and splits occur)."""
    posting_size = draw(st.integers(2, 24))
    fields: dict[str, Any] = {
        "dim": dim,
        "metric": draw(metrics),
        "posting_size": posting_size,
        "max_posting_size": draw(st.integers(posting_size, 3 * posting_size)),
        "replica_cap": draw(st.integers(1, 8)),
        "eps1": draw(st.sampled_from([0.0, 0.1, 0.5, 2.0])),
        "codec": draw(codecs),
        "pq_m": draw(st.sampled_from([1, 3, 4, 64])),
        "matryoshka": draw(st.booleans()),
        "seed": draw(st.integers(0, 1000)),
    }
    # stage dims: route on a prefix of the scanned prefix of the collection space
    stages = draw(st.sampled_from(["all dims", "scan prefix", "route and scan prefixes"]))
    if stages != "all dims":
        fields["d_scan"] = draw(st.integers(1, dim))
        fields["d_route"] = fields["d_scan"]
    if stages == "route and scan prefixes":
        fields["d_route"] = draw(st.integers(1, fields["d_scan"]))
    fields.update(fixed)
    return IndexConfig(**fields)


search_params = st.builds(
    SearchParams,
    max_postings=st.integers(1, 64),
    eps2=st.floats(0.0, 5.0),
    refine_factor=st.floats(1.0, 8.0),
    fetch_budget_mb=st.floats(1e-6, 64.0),
)

#: Arrays a vector argument must refuse with DTypeError.
bad_vector_dtypes = st.sampled_from(
    [
        np.array([["a", "b"]]),
        np.array([[1 + 2j, 3 + 0j]]),
        np.array([[True, False]]),
        np.array([[object(), object()]], dtype=object),
    ]
)
