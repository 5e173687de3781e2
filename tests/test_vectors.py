"""The validation gate: canonical float32 vectors and int64 ids, or a typed error."""

from __future__ import annotations

from pathlib import Path

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import assume, given

import strategies as S
from anns import (
    MAX_K,
    DimensionMismatchError,
    DTypeError,
    DuplicateIdsError,
    InvalidArgumentError,
    LimitExceededError,
    NonFiniteError,
)
from anns.vectors import MAX_ID, as_ids, as_vectors, check_k, integer_dtype, normalized


# --------------------------------------------------------------------------- vectors
@given(S.float_matrices())
def test_finite_floats_pass_unchanged_as_float32_c_contiguous(x: np.ndarray) -> None:
    out = as_vectors(np.asfortranarray(x), x.shape[1])
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == x.shape
    np.testing.assert_array_equal(out, x)


@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 5), st.integers(1, 5)),
                  elements=st.integers(-(2**24), 2**24)))
def test_integer_vectors_are_converted(x: np.ndarray) -> None:
    out = as_vectors(x, x.shape[1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_one_vector_is_a_batch_of_one() -> None:
    assert as_vectors([1.0, 2.0, 3.0], 3).shape == (1, 3)


@given(S.bad_vector_dtypes)
def test_non_numeric_dtypes_are_dtype_errors(x: np.ndarray) -> None:
    with pytest.raises(DTypeError, match=f"dtype {x.dtype}"):
        as_vectors(x, 2)


def test_dtype_error_is_also_a_type_and_value_error() -> None:
    with pytest.raises(TypeError):
        as_vectors(np.array([["a", "b"]]), 2)
    with pytest.raises(ValueError):
        as_vectors(np.array([["a", "b"]]), 2)


@given(st.integers(1, 12), st.integers(1, 12))
def test_wrong_dim_names_both_dims(got: int, want: int) -> None:
    if got == want:
        return
    message = f"dim {got} does not match collection dim {want}"
    with pytest.raises(DimensionMismatchError, match=message):
        as_vectors(np.zeros((3, got), np.float32), want)


def test_three_dimensional_input_is_a_dimension_error() -> None:
    with pytest.raises(DimensionMismatchError, match="2-D"):
        as_vectors(np.zeros((2, 2, 2), np.float32), 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@given(row=st.integers(0, 9), col=st.integers(0, 3))
def test_non_finite_values_name_the_first_bad_row(bad: float, row: int, col: int) -> None:
    x = np.ones((10, 4), np.float32)
    x[row, col] = bad
    with pytest.raises(NonFiniteError, match=f"first at row {row}"):
        as_vectors(x, 4)


def test_float64_beyond_float32_range_is_non_finite() -> None:
    x = np.array([[1.0, 1e300]])
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        as_vectors(x, 2)


@given(S.float_matrices(elements=st.floats(-100, 100, width=32)))
def test_cosine_rows_come_out_unit_norm(x: np.ndarray) -> None:
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    assume((norms > 1e-3).all())
    out = as_vectors(x, x.shape[1], metric="cosine")
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out * norms[:, None], x, rtol=1e-4, atol=1e-5)


def test_zero_vector_has_no_direction_under_cosine() -> None:
    with pytest.raises(InvalidArgumentError, match="row 1 has zero norm"):
        as_vectors(np.array([[1.0, 0.0], [0.0, 0.0]]), 2, metric="cosine")
    with pytest.raises(InvalidArgumentError, match="zero norm"):
        normalized(np.zeros((1, 3), np.float32))


# ------------------------------------------------------------------------------- ids
@given(st.lists(S.vector_ids, unique=True, max_size=20))
def test_unique_non_negative_ids_pass_as_int64(ids: list[int]) -> None:
    out = as_ids(np.array(ids, dtype=np.int64), len(ids))
    assert out.dtype == np.int64 and out.tolist() == ids


def test_empty_ids_of_any_numeric_dtype_pass() -> None:
    assert as_ids([]).dtype == np.int64
    assert as_ids(np.array([], np.float32)).shape == (0,)


@pytest.mark.parametrize("ids", [[1.0, 2.0], np.array([0.5]), ["a", "b"], [1 + 0j]])
def test_non_integer_ids_are_dtype_errors(ids: object) -> None:
    with pytest.raises(DTypeError, match="ids must be an integer array"):
        as_ids(ids)


def test_negative_ids_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="non-negative.*-1"):
        as_ids([3, -1])


def test_uint64_ids_beyond_int64_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_ID}"):
        as_ids(np.array([2**63], dtype=np.uint64))


@given(st.lists(S.vector_ids, min_size=1, max_size=10, unique=True), st.data())
def test_duplicate_ids_name_the_duplicate(ids: list[int], data: st.DataObject) -> None:
    dup = data.draw(st.sampled_from(ids))
    with pytest.raises(DuplicateIdsError, match=f"duplicate ids in one batch: .*{dup}"):
        as_ids(ids + [dup])


def test_ids_count_must_match_vectors() -> None:
    with pytest.raises(InvalidArgumentError, match="got 2 ids for 3 vectors"):
        as_ids([1, 2], 3)


def test_two_dimensional_ids_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="1-D"):
        as_ids([[1, 2]])


# -------------------------------------------------------------------------------- k
@pytest.mark.parametrize("k", [1, 10, MAX_K, np.int64(5), np.uint8(3)])
def test_valid_k(k: int) -> None:
    assert check_k(k) == int(k)
    assert type(check_k(k)) is int


@pytest.mark.parametrize("k", [0, -1, -(2**40)])
def test_non_positive_k(k: int) -> None:
    with pytest.raises(InvalidArgumentError, match=f"k must be positive, got {k}"):
        check_k(k)


@pytest.mark.parametrize("k", [MAX_K + 1, 10**9])
def test_k_beyond_max_k(k: int) -> None:
    with pytest.raises(LimitExceededError, match=f"k {k} exceeds the limit of {MAX_K}"):
        check_k(k)


@pytest.mark.parametrize("k", [2.0, True, "3", None])
def test_non_integer_k(k: object) -> None:
    with pytest.raises(DTypeError, match="k must be an integer"):
        check_k(k)


def test_integer_dtype_is_the_smallest_type_every_value_fits(tmp_path: Path) -> None:
    pixels = np.array([[0, 255], [17, 3]], dtype=np.float32)
    assert integer_dtype(pixels, pixels[:1]) == "uint8"
    assert integer_dtype(pixels - 128) == "int8"
    assert integer_dtype(pixels, np.array([[0.5, 1]], np.float32)) == "float32"
    assert integer_dtype(pixels + 1) == "float32"  # 256 fits neither
    # a mapped file, read a few rows at a time: a bad value in a late block still counts
    big = np.zeros((50, 2), dtype=np.float32)
    big[47, 1] = -3
    np.save(tmp_path / "x.npy", big)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert integer_dtype(mapped, rows=8) == "int8"
