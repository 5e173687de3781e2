"""The ``anns`` command: build / search / info end to end, and every error as one stderr line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import anns
from anns import MAX_K, StorageConfig
from anns.cli import main
from anns.evaluation import exact_knn, write_dataset
from anns.formats import write_fvecs
from anns.storage import Storage

MARKER = "ANNS_COLLECTION"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 1, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("anns: error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert out == ""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DESIGN.md dataset directory (base.npy [500, 8], query.npy [15, 8], gt.npy)."""
    rng = np.random.default_rng(4)
    out = tmp_path_factory.mktemp("data")
    write_dataset(out, rng.standard_normal((500, 8)).astype(np.float32),
                  rng.standard_normal((15, 8)).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    path = tmp_path_factory.mktemp("coll") / "c"
    anns.build(path, dataset / "base.npy", config={"posting_size": 16})
    return path


# ------------------------------------------------------------------------- end to end
def test_build_search_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    code, out, _ = run(capsys, "build", tmp_path / "c", "--vectors", dataset / "base.npy",
                       "--no-progress")
    assert code == 0
    summary = json.loads(out)
    assert summary["n"] == 500 and summary["dim"] == 8 and summary["postings"] > 1

    code, out, err = run(capsys, "search", tmp_path / "c", "--queries", dataset / "query.npy",
                         "-k", "10", "--out", tmp_path / "ids.npy", "--truth", dataset / "gt.npy")
    assert code == 0, err
    report = json.loads(out)
    assert report["queries"] == 15 and report["k"] == 10
    assert report["recall@10"] >= 0.9
    ids = np.load(tmp_path / "ids.npy")
    assert ids.dtype == np.int64 and ids.shape == (15, 10)
    with anns.Collection.open(tmp_path / "c") as coll:
        np.testing.assert_array_equal(ids, coll.search(np.load(dataset / "query.npy"), 10).ids)

    code, out, _ = run(capsys, "info", tmp_path / "c")
    assert code == 0
    info = json.loads(out)
    assert info["count"] == 500 and info["config"]["dim"] == 8
    assert info["build"]["n"] == 500


def test_search_out_pads_with_minus_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    base = np.load(dataset / "base.npy")[:30]
    np.save(tmp_path / "base.npy", base)
    assert main(["build", str(tmp_path / "c"), "--vectors", str(tmp_path / "base.npy"),
                 "--no-progress"]) == 0
    code, _, err = run(capsys, "search", tmp_path / "c", "--queries", dataset / "query.npy",
                       "-k", "50", "--out", tmp_path / "ids.npy", "--max-postings", "1000",
                       "--eps2", "100", "--refine-factor", "10")
    assert code == 0, err
    ids = np.load(tmp_path / "ids.npy")
    assert ids.dtype == np.int64 and ids.shape == (15, 50)
    assert (ids[:, 30:] == -1).all()
    assert (np.sort(ids[:, :30], axis=1) == np.arange(30)).all()


def test_build_with_fvecs_ids_metric_and_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    base = np.load(dataset / "base.npy")
    write_fvecs(tmp_path / "base.fvecs", base)
    ids = np.arange(500, dtype=np.int64) * 3 + 7
    np.save(tmp_path / "ids.npy", ids)
    (tmp_path / "config.json").write_text(json.dumps({"posting_size": 10, "codec": "flat"}))
    code, out, err = run(capsys, "build", tmp_path / "c", "--vectors", tmp_path / "base.fvecs",
                         "--ids", tmp_path / "ids.npy", "--metric", "cosine",
                         "--config", tmp_path / "config.json", "--no-progress")
    assert code == 0, err
    code, out, _ = run(capsys, "info", tmp_path / "c")
    config = json.loads(out)["config"]
    assert config["metric"] == "cosine" and config["posting_size"] == 10
    assert config["codec"] == "flat"
    write_fvecs(tmp_path / "q.fvecs", np.load(dataset / "query.npy"))
    code, _, err = run(capsys, "search", tmp_path / "c", "--queries", tmp_path / "q.fvecs",
                       "-k", "5", "--out", tmp_path / "ids.npy", "--max-postings", "1000",
                       "--eps2", "100", "--refine-factor", "100")
    assert code == 0, err
    truth, _ = exact_knn(base, np.load(dataset / "query.npy"), 5, "cosine")
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), ids[truth])


def test_build_progress_goes_to_stderr_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    code, out, _ = run(capsys, "build", tmp_path / "c", "--vectors", dataset / "base.npy")
    assert code == 0
    assert len(out.splitlines()) == 1 and json.loads(out)["n"] == 500


# ------------------------------------------------------------------------ input errors
def test_npy_that_is_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "base.npy").write_text("1 2 3\n")
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               tmp_path / "base.npy"), "base.npy", "not a valid .npy file")
    assert not (tmp_path / "c").exists()


def test_truncated_fvecs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fvecs(tmp_path / "base.fvecs", np.ones((10, 4), np.float32))
    raw = (tmp_path / "base.fvecs").read_bytes()
    (tmp_path / "base.fvecs").write_bytes(raw[:-5])
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               tmp_path / "base.fvecs"), "base.fvecs", "not a valid .fvecs")


def test_fvecs_whose_headers_disagree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fvecs(tmp_path / "base.fvecs", np.ones((10, 4), np.float32))
    raw = bytearray((tmp_path / "base.fvecs").read_bytes())
    raw[20:24] = np.array([9], "<i4").tobytes()
    (tmp_path / "base.fvecs").write_bytes(bytes(raw))
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               tmp_path / "base.fvecs"), "row headers disagree")


def test_missing_vectors_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               tmp_path / "nope.npy"), "nope.npy", "does not exist")


@pytest.mark.parametrize(
    "array", [np.array([["a", "b"], ["c", "d"]]), np.ones((2, 2), np.complex64)],
    ids=["strings", "complex"],
)
def test_wrong_dtype_in_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], array: np.ndarray
) -> None:
    np.save(tmp_path / "base.npy", array)
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               tmp_path / "base.npy"), f"dtype {array.dtype}")
    assert not (tmp_path / "c").exists()


def test_float_ids_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path) -> None:
    np.save(tmp_path / "ids.npy", np.arange(500, dtype=np.float64))
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               dataset / "base.npy", "--ids", tmp_path / "ids.npy"),
                          "ids must be an integer array")


def test_error_mid_build_with_progress_bars(tmp_path: Path) -> None:
    # the real command in a real process: progress bars draw on the real stderr, and the one
    # error line must be all that is left there (not appended to a bar, not erased by one)
    x = np.random.default_rng(0).standard_normal((3000, 4)).astype(np.float32)
    x[2999, 1] = np.nan  # met while vectors stream past a progress bar, not in training
    np.save(tmp_path / "base.npy", x)
    (tmp_path / "config.json").write_text(json.dumps({"train_sample_mb": 0.001}))
    done = subprocess.run(
        [sys.executable, "-m", "anns.cli", "build", str(tmp_path / "c"), "--vectors",
         str(tmp_path / "base.npy"), "--config", str(tmp_path / "config.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("anns: error: "), repr(done.stderr)
    assert done.stderr.count("\n") == 1 and "\r" not in done.stderr, repr(done.stderr)
    assert "NaN or Inf" in done.stderr
    assert not (tmp_path / "c").exists()


def test_duplicate_ids_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    ids = np.arange(500, dtype=np.int64)
    ids[10] = 3
    np.save(tmp_path / "ids.npy", ids)
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               dataset / "base.npy", "--ids", tmp_path / "ids.npy"),
                          "duplicate ids in one batch: 3")


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"colour": "blue"}, "colour"),
        ({"posting_size": -1}, "posting_size"),
        ({"metric": "hamming"}, "metric"),
        ({"posting_size": 64, "max_posting_size": 8}, "max_posting_size"),
    ],
)
def test_wrong_config_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path, config: dict, needle: str
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               dataset / "base.npy", "--config", tmp_path / "config.json"),
                          "invalid IndexConfig", needle)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "42"], ids=["broken", "list", "number"])
def test_config_that_is_not_a_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path, text: str
) -> None:
    (tmp_path / "config.json").write_text(text)
    assert_one_error_line(*run(capsys, "build", tmp_path / "c", "--vectors",
                               dataset / "base.npy", "--config", tmp_path / "config.json"),
                          "config.json")


def test_build_over_an_existing_collection(
    capsys: pytest.CaptureFixture[str], built: Path, dataset: Path
) -> None:
    assert_one_error_line(*run(capsys, "build", built, "--vectors", dataset / "base.npy"),
                          "already exists")
    with anns.Collection.open(built, StorageConfig(read_only=True)) as coll:
        assert coll.count() == 500


# ---------------------------------------------------------------------- search errors
def test_search_wrong_query_dimension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path
) -> None:
    np.save(tmp_path / "q.npy", np.ones((3, 5), np.float32))
    assert_one_error_line(*run(capsys, "search", built, "--queries", tmp_path / "q.npy"),
                          "query dim 5 does not match collection dim 8")


def test_search_nan_queries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path
) -> None:
    q = np.ones((3, 8), np.float32)
    q[1, 1] = np.inf
    np.save(tmp_path / "q.npy", q)
    assert_one_error_line(*run(capsys, "search", built, "--queries", tmp_path / "q.npy"),
                          "NaN or Inf", "row 1")


@pytest.mark.parametrize(("k", "needle"), [("0", "k must be positive"), ("-2", "got -2"),
                                           (str(MAX_K + 1), f"limit of {MAX_K}")])
def test_search_bad_k(
    capsys: pytest.CaptureFixture[str], built: Path, dataset: Path, k: str, needle: str
) -> None:
    assert_one_error_line(*run(capsys, "search", built, "--queries", dataset / "query.npy",
                               "-k", k), needle)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--eps2", "-1"), ("--max-postings", "0"), ("--refine-factor", "0.5"),
     ("--fetch-budget-mb", "0")],
)
def test_search_bad_knobs(
    capsys: pytest.CaptureFixture[str], built: Path, dataset: Path, flag: str, value: str
) -> None:
    field = flag[2:].replace("-", "_")
    assert_one_error_line(*run(capsys, "search", built, "--queries", dataset / "query.npy",
                               flag, value), "invalid SearchParams", field)


def test_search_queries_file_that_lies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path
) -> None:
    (tmp_path / "q.fvecs").write_bytes(b"\x00" * 10)
    assert_one_error_line(*run(capsys, "search", built, "--queries", tmp_path / "q.fvecs"),
                          "q.fvecs")


def test_search_missing_truth_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path, dataset: Path
) -> None:
    assert_one_error_line(*run(capsys, "search", built, "--queries", dataset / "query.npy",
                               "--truth", tmp_path / "gt.npy"), "gt.npy")


def test_search_out_into_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path, dataset: Path
) -> None:
    assert_one_error_line(*run(capsys, "search", built, "--queries", dataset / "query.npy",
                               "--out", tmp_path / "no" / "such" / "ids.npy"), "ids.npy")


def test_search_an_empty_collection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path
) -> None:
    anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=8)).close()
    assert_one_error_line(*run(capsys, "search", tmp_path / "c", "--queries",
                               dataset / "query.npy"), "empty")
    code, out, _ = run(capsys, "info", tmp_path / "c")
    assert code == 0 and json.loads(out)["count"] == 0


# ------------------------------------------------------------------ collection errors
@pytest.mark.parametrize("command", ["search", "info"])
def test_missing_collection_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path, command: str
) -> None:
    extra = ["--queries", dataset / "query.npy"] if command == "search" else []
    assert_one_error_line(*run(capsys, command, tmp_path / "nowhere", *extra),
                          "no collection at", "nowhere")


@pytest.mark.parametrize("command", ["search", "info"])
def test_dir_that_is_not_a_collection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: Path, command: str
) -> None:
    (tmp_path / "x.txt").write_text("hi")
    extra = ["--queries", dataset / "query.npy"] if command == "search" else []
    assert_one_error_line(*run(capsys, command, tmp_path, *extra), f"{MARKER} file is missing")


def _copy_of(built: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(built, tmp_path / "copy")
    return tmp_path / "copy"


def test_corrupt_marker(tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path) -> None:
    path = _copy_of(built, tmp_path)
    (path / MARKER).write_text("\x00\x01garbage")
    assert_one_error_line(*run(capsys, "info", path), "is unreadable")


def test_unknown_format_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path
) -> None:
    path = _copy_of(built, tmp_path)
    (path / MARKER).write_text(json.dumps({"format_version": 999}))
    assert_one_error_line(*run(capsys, "info", path), "format version 999")


def test_interrupted_build(tmp_path: Path, capsys: pytest.CaptureFixture[str], built: Path,
                           dataset: Path) -> None:
    path = _copy_of(built, tmp_path)
    store = Storage.open(path, StorageConfig())
    batch = store.batch()
    batch.put_meta("state", b"building")
    store.write(batch)
    store.close()
    del store
    for argv in (["info", path], ["search", path, "--queries", dataset / "query.npy"]):
        assert_one_error_line(*run(capsys, *argv), "did not finish")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["search"])
    assert exc.value.code == 2
    capsys.readouterr()
