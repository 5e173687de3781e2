"""Input files: .npy and .fvecs, memory-mapped; files that lie about their format are refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

import anns
import strategies as S
from anns import InputFormatError, NotFoundError
from anns.formats import open_ids, open_matrix, write_fvecs
from invariants import assert_same_vectors, exhaustive


# ------------------------------------------------------------------------- round trips
@given(S.float_matrices(max_rows=30, max_dim=20))
def test_fvecs_round_trip(x: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.fvecs"
        write_fvecs(path, x)
        assert path.stat().st_size == x.shape[0] * 4 * (x.shape[1] + 1)
        back = open_matrix(path)
        assert back.shape == x.shape and back.dtype == np.float32
        np.testing.assert_array_equal(back, x)
        del back  # release the memory map before the directory goes


def test_fvecs_layout_is_dimension_then_row(tmp_path: Path) -> None:
    write_fvecs(tmp_path / "x.fvecs", np.array([[1.5, -2.0, 3.0]], np.float32))
    raw = (tmp_path / "x.fvecs").read_bytes()
    assert np.frombuffer(raw[:4], "<i4")[0] == 3
    np.testing.assert_array_equal(np.frombuffer(raw[4:], "<f4"), [1.5, -2.0, 3.0])


def test_npy_is_memory_mapped_read_only(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "x.npy", x)
    back = open_matrix(tmp_path / "x.npy")
    assert isinstance(back, np.memmap) and not back.flags.writeable
    np.testing.assert_array_equal(back, x)


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    x = np.ones((2, 3), np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "x.npy").rename(tmp_path / "X.NPY")
    np.testing.assert_array_equal(open_matrix(tmp_path / "X.NPY"), x)


# ---------------------------------------------------------------------- lying files
def test_npy_that_is_text(tmp_path: Path) -> None:
    path = tmp_path / "base.npy"
    path.write_text("1.0 2.0 3.0\n4.0 5.0 6.0\n")
    with pytest.raises(InputFormatError, match=r"base\.npy: not a valid \.npy file"):
        open_matrix(path)


def test_npy_of_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([[object()]], dtype=object), allow_pickle=True)
    with pytest.raises(InputFormatError, match=r"obj\.npy"):
        open_matrix(path)


def test_one_dimensional_npy_is_not_a_matrix(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones(5, np.float32))
    with pytest.raises(InputFormatError, match=r"2-D matrix.*\(5,\)"):
        open_matrix(tmp_path / "v.npy")


def test_truncated_fvecs(tmp_path: Path) -> None:
    path = tmp_path / "base.fvecs"
    write_fvecs(path, np.ones((5, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputFormatError, match=r"base\.fvecs: not a valid \.fvecs file"):
        open_matrix(path)


def test_fvecs_shorter_than_a_header(tmp_path: Path) -> None:
    path = tmp_path / "tiny.fvecs"
    path.write_bytes(b"\x01\x00")
    with pytest.raises(InputFormatError, match="too short"):
        open_matrix(path)


def test_fvecs_whose_row_headers_disagree(tmp_path: Path) -> None:
    path = tmp_path / "base.fvecs"
    write_fvecs(path, np.ones((6, 4), np.float32))
    raw = bytearray(path.read_bytes())
    raw[3 * 20 : 3 * 20 + 4] = np.array([7], "<i4").tobytes()  # row 3 claims dim 7
    path.write_bytes(bytes(raw))
    with pytest.raises(InputFormatError, match="row headers disagree with dim 4"):
        open_matrix(path)


def test_fvecs_that_is_really_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "base.fvecs"
    path.write_text("0.1 0.2 0.3 0.4\n" * 10)
    with pytest.raises(InputFormatError, match="fvecs"):
        open_matrix(path)


def test_fvecs_with_negative_dimension_header(tmp_path: Path) -> None:
    path = tmp_path / "neg.fvecs"
    path.write_bytes(np.array([-2, 0, 0], "<i4").tobytes())
    with pytest.raises(InputFormatError, match="dim header -2"):
        open_matrix(path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "base.csv"
    path.write_text("1,2\n")
    with pytest.raises(InputFormatError, match="unsupported extension '.csv'"):
        open_matrix(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        open_matrix(tmp_path / "nope.npy")
    with pytest.raises(NotFoundError, match="does not exist"):
        open_ids(tmp_path / "nope.npy")


def test_ids_must_be_one_dimensional_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "ids.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(InputFormatError, match="ids must be 1-D"):
        open_ids(tmp_path / "ids.npy")
    write_fvecs(tmp_path / "ids.fvecs", np.ones((2, 2), np.float32))
    with pytest.raises(InputFormatError, match="ids must be a .npy file"):
        open_ids(tmp_path / "ids.fvecs")


# ------------------------------------------------------------------- building from files
def test_build_from_npy_and_fvecs_gives_the_same_collection(
    tmp_path: Path, small: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = small
    np.save(tmp_path / "base.npy", base)
    write_fvecs(tmp_path / "base.fvecs", base)
    results = []
    for name in ("base.npy", "base.fvecs"):
        anns.build(tmp_path / f"from-{name}", tmp_path / name, config={"posting_size": 16})
        with anns.Collection.open(tmp_path / f"from-{name}") as coll:
            default = coll.search(queries, 10)
            everything = coll.search(queries, 10, exhaustive(600, 10))
            results.append((default, everything, coll.info()["postings"], coll.get([0, 599])))
    (d1, e1, p1, g1), (d2, e2, p2, g2) = results
    assert p1 == p2
    np.testing.assert_array_equal(d1.ids, d2.ids)
    np.testing.assert_array_equal(d1.distances, d2.distances)
    np.testing.assert_array_equal(e1.ids, e2.ids)
    np.testing.assert_array_equal(g1, g2)
    assert_same_vectors(g1, base[[0, 599]])


def test_build_with_ids_file(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    base, queries = small
    ids = np.arange(len(base), dtype=np.int64) * 7 + 1_000_000_000_000
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "ids.npy", ids)
    anns.build(tmp_path / "c", tmp_path / "base.npy", tmp_path / "ids.npy")
    with anns.Collection.open(tmp_path / "c") as coll:
        result = coll.search(queries, 5, exhaustive(600, 5))
        assert_same_vectors(coll.get(ids[[3, 42]]), base[[3, 42]])
        assert not coll.contains([0, 1, 2]).any()
    truth = ids[np.argsort(((queries[:, None] - base[None]) ** 2).sum(-1), axis=1)[:, :5]]
    np.testing.assert_array_equal(result.ids, truth)


def test_build_from_a_lying_file_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "base.npy").write_text("not numpy\n")
    with pytest.raises(InputFormatError):
        anns.build(tmp_path / "c", tmp_path / "base.npy")
    assert not (tmp_path / "c").exists()
