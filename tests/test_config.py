"""Configuration models: frozen, extra fields refused, bad values named in one message."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given
from pydantic import ValidationError

import strategies as S
from anns import IndexConfig, InvalidArgumentError, SearchParams, StorageConfig
from anns.config import validated


def test_models_are_frozen() -> None:
    for model in (IndexConfig(dim=4), SearchParams(), StorageConfig()):
        field = next(iter(type(model).model_fields))
        with pytest.raises(ValidationError):
            setattr(model, field, getattr(model, field))


@pytest.mark.parametrize("model", [IndexConfig, SearchParams, StorageConfig])
def test_unknown_fields_are_refused_by_name(model: type) -> None:
    fields = {"dim": 4} if model is IndexConfig else {}
    with pytest.raises(InvalidArgumentError, match=f"invalid {model.__name__}: nprobes: Extra"):
        validated(model, nprobes=3, **fields)


def test_every_bad_field_is_named_on_one_line() -> None:
    with pytest.raises(InvalidArgumentError) as exc:
        validated(IndexConfig, dim=-1, replica_cap=0, metric="manhattan")
    message = str(exc.value)
    assert "\n" not in message
    for name in ("dim", "replica_cap", "metric"):
        assert name in message


def test_max_posting_size_must_hold_a_posting() -> None:
    message = "max_posting_size 8 is smaller than posting_size 9"
    with pytest.raises(InvalidArgumentError, match=message):
        validated(IndexConfig, dim=4, posting_size=9, max_posting_size=8)
    assert validated(IndexConfig, dim=4, posting_size=8, max_posting_size=8).max_posting_size == 8


@given(st.data())
def test_index_config_json_round_trip(data: st.DataObject) -> None:
    config = data.draw(S.index_configs(data.draw(S.dims)))
    assert IndexConfig.model_validate_json(config.model_dump_json()) == config


@given(st.integers(1, 1024), st.floats(1.0, 1000.0))
def test_rerank_depth_is_at_least_k_times_refine_factor(k: int, refine: float) -> None:
    depth = SearchParams(refine_factor=refine).rerank_depth(k)
    assert depth >= k and depth >= k * refine - 1e-6
    assert depth < k * refine + 1


@pytest.mark.parametrize(("k", "refine", "depth"), [(100, 1.1, 110), (50, 1.1, 55), (10, 2.5, 25)])
def test_rerank_depth_of_a_whole_product_is_that_product(k: int, refine: float, depth: int) -> None:
    assert SearchParams(refine_factor=refine).rerank_depth(k) == depth


def test_stage_dims_default_to_the_prefix_above_them() -> None:
    # d_scan alone: routing uses the scanned prefix, not all dims (which d_scan could not hold)
    config = validated(IndexConfig, dim=32, d_scan=24)
    assert (config.route_dims, config.scan_dims, config.rerank_dims) == (24, 24, 32)
    config = validated(IndexConfig, dim=32, d_route=8)
    assert (config.route_dims, config.scan_dims, config.rerank_dims) == (8, 32, 32)
    with pytest.raises(InvalidArgumentError, match="d_route 25 is larger than d_scan 24"):
        validated(IndexConfig, dim=32, d_route=25, d_scan=24)
    with pytest.raises(InvalidArgumentError, match="d_scan"):
        validated(IndexConfig, dim=32, d_scan=33)
