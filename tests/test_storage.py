"""The RocksDB layout: key order, value codecs, the marker and format version, atomic batches."""

from __future__ import annotations

import json
from pathlib import Path

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import strategies as S
from anns import (
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptCollectionError,
    FormatVersionError,
    StorageConfig,
)
from anns.storage import (
    FORMAT_VERSION,
    POSTINGS,
    TOMBSTONE,
    VECTORS,
    Storage,
    decode_posting,
    decode_record,
    decode_records,
    encode_posting,
    encode_record,
    encode_records,
    id_keys,
    posting_keys,
    record_version,
)

MARKER = "ANNS_COLLECTION"


# --------------------------------------------------------------------- value codecs
@given(st.integers(0, 40), st.integers(1, 64), st.data())
def test_posting_round_trip(m: int, code_size: int, data: st.DataObject) -> None:
    ids = data.draw(S.id_arrays(m))
    codes = data.draw(hnp.arrays(np.uint8, (m, code_size)))
    back_ids, back_codes = decode_posting(encode_posting(ids, codes), code_size)
    np.testing.assert_array_equal(back_ids, ids)
    np.testing.assert_array_equal(back_codes, codes)
    assert back_codes.shape == (m, code_size)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=64), st.sampled_from([0, TOMBSTONE]))
def test_record_round_trip(pids: list[int], flags: int) -> None:
    back_flags, back = decode_record(encode_record(np.array(pids, dtype=np.int64), flags))
    assert back_flags == flags
    assert back.dtype == np.int64 and back.tolist() == pids


@given(
    hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
               elements=st.one_of(st.just(-1), st.integers(0, 2**32 - 1))),
    st.sampled_from([0, TOMBSTONE]), st.integers(0, 127),
)
def test_encode_records_equals_one_encode_per_row(
    pids: np.ndarray, flags: int, version: int
) -> None:
    expected = [encode_record(row[row >= 0], flags, version) for row in pids]
    assert encode_records(pids, flags, version) == expected


@given(st.lists(st.one_of(
    st.none(),
    st.tuples(st.lists(st.integers(0, 2**32 - 1), max_size=9), st.sampled_from([0, TOMBSTONE]),
              st.integers(0, 127)),
), max_size=40))
def test_decode_records_equals_one_decode_per_record(
    records: list[tuple[list[int], int, int] | None],
) -> None:
    blobs = [None if r is None else encode_record(np.array(r[0], np.int64), r[1], r[2])
             for r in records]
    flags, versions, pids, counts = decode_records(blobs)
    assert flags.dtype == versions.dtype == pids.dtype == counts.dtype == np.int64
    offsets = np.concatenate([[0], np.cumsum(counts)])
    assert offsets[-1] == len(pids)
    for i, blob in enumerate(blobs):
        if blob is None:
            assert (flags[i], versions[i], counts[i]) == (-1, 0, 0)
            continue
        one_flags, held = decode_record(blob)
        assert flags[i] == one_flags and versions[i] == record_version(blob)
        assert pids[offsets[i] : offsets[i + 1]].tolist() == held.tolist()


def test_decode_records_refuses_a_torn_record() -> None:
    with pytest.raises(CorruptCollectionError, match="6 bytes"):
        decode_records([encode_record(np.array([1])), b"\x00" * 6])


@given(st.lists(S.vector_ids, min_size=1, max_size=30, unique=True))
def test_id_keys_sort_in_numeric_order(ids: list[int]) -> None:
    keys = id_keys(np.array(ids, dtype=np.int64))
    assert all(len(k) == 8 for k in keys)
    assert [i for _, i in sorted(zip(keys, ids))] == sorted(ids)


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30, unique=True))
def test_posting_keys_sort_in_numeric_order(pids: list[int]) -> None:
    keys = posting_keys(np.array(pids, dtype=np.int64))
    assert [int.from_bytes(k, "big") for k in keys] == pids
    assert [p for _, p in sorted(zip(keys, pids))] == sorted(pids)


# ------------------------------------------------------------------------ lifecycle
@pytest.fixture
def store(tmp_path: Path):
    storage = Storage.create(tmp_path / "c", StorageConfig())
    yield storage
    storage.close()


def test_batch_is_applied_and_read_back(store: Storage) -> None:
    batch = store.batch()
    batch.put_posting(3, encode_posting(np.array([7, 9]), np.ones((2, 4), np.uint8)))
    batch.put_posting(1, encode_posting(np.array([5]), np.zeros((1, 4), np.uint8)))
    batch.put_vectors(np.array([5, 7]), np.array([[1, 2], [3, 4]], np.float32))
    batch.put_record(5, encode_record(np.array([1])))
    batch.put_records(np.array([8, 9]), encode_records(np.array([[2, -1], [-1, 3]]), version=2))
    batch.put_meta("answer", b"42")
    # nothing is visible before the batch is written
    assert store.get_meta("answer") is None and store.get_vectors(np.array([5])) == [None]
    store.write(batch)
    assert store.get_meta("answer") == b"42"
    assert [int.from_bytes(bytes(k), "big") for k, _ in store.iter_postings()] == [1, 3]
    blob3, missing = store.get_postings(np.array([3, 2]))
    assert missing is None
    np.testing.assert_array_equal(decode_posting(blob3, 4)[0], [7, 9])
    v5, v6 = store.get_vectors(np.array([5, 6]))
    assert v6 is None
    np.testing.assert_array_equal(np.frombuffer(v5, "<f4"), [1, 2])
    rec5, rec7 = store.get_records(np.array([5, 7]))
    assert rec7 is None and decode_record(rec5)[1].tolist() == [1]
    rec8, rec9 = store.get_records(np.array([8, 9]))
    assert [decode_record(r)[1].tolist() for r in (rec8, rec9)] == [[2], [3]]
    assert record_version(rec9) == 2

    batch = store.batch()
    batch.delete_posting(3)
    batch.delete_vectors(np.array([5]))
    store.write(batch, sync=True)
    assert store.get_postings(np.array([3])) == [None]
    assert store.get_vectors(np.array([5, 7]))[0] is None


def test_full_vectors_bypass_the_block_cache(tmp_path: Path) -> None:
    """Postings are cached; full vectors (read once each, at random) are not, and the index
    and filter blocks of their files stay with the table readers."""
    store = Storage.create(tmp_path / "c", StorageConfig(block_cache_bytes=1 << 20))
    try:
        ids = np.arange(2000)
        batch = store.batch()
        batch.put_vectors(ids, S.gaussian(0, 2000, 64))
        for pid in range(20):
            batch.put_posting(pid, encode_posting(ids[pid::20], np.ones((100, 16), np.uint8)))
        store.write(batch)
        store.flush()  # reads now come from SST files, not the memtables
        before = store.memory_usage()
        assert before["table_readers"] > 0 and before["memtables"] >= 0
        assert all(b is not None for b in store.get_vectors(ids[::7]))
        assert store.block_cache_usage() == before["block_cache"]
        assert all(b is not None for b in store.get_postings(np.arange(20)))
        assert store.block_cache_usage() > before["block_cache"]
        assert store.memory_usage()["block_cache"] <= 1 << 20
    finally:
        store.close()


def _table_figures(store: Storage, family: str) -> dict[str, int]:
    """RocksDB's aggregated table properties of one family: '# data blocks', '# entries'..."""
    text = store._cfs[family].property_value("rocksdb.aggregated-table-properties")
    pairs = (item.split("=", 1) for item in text.split(";") if "=" in item)
    return {k.strip(): int(v) for k, v in pairs if v.strip().isdigit()}


@pytest.mark.parametrize(("dtype", "dim", "per_block"), [
    ("float32", 784, 1), ("float32", 300, 1), ("float32", 64, 2), ("uint8", 784, 1),
    ("uint8", 128, 4)])
def test_a_vector_read_fetches_its_own_block(
    tmp_path: Path, dtype: str, dim: int, per_block: int
) -> None:
    """A rerank read fetches the whole block holding the vector: vectors of 512 bytes or more
    sit one to a block (at RocksDB's default 4 KiB, two 3 KiB vectors shared one; at 1 KiB,
    two 784-byte uint8 ones), smaller ones a few to a block of about 512 bytes."""
    store = Storage.create(tmp_path / "c", StorageConfig())
    try:
        batch = store.batch()
        rows = S.gaussian(0, 600, dim)
        if dtype == "uint8":
            rows = np.clip(np.rint(rows * 40 + 128), 0, 255).astype(np.uint8)
        batch.put_vectors(np.arange(600), rows)
        store.write(batch)
        store.flush()
        figures = _table_figures(store, VECTORS)
        assert figures["# entries"] == 600
        assert figures["# data blocks"] == 600 // per_block
    finally:
        store.close()


@pytest.mark.parametrize(("nbytes", "per_block"), [(3_400, 1), (700, 1), (300, 2)])
def test_a_posting_read_fetches_its_own_block(
    tmp_path: Path, nbytes: int, per_block: int
) -> None:
    """A posting of 512 bytes or more sits alone in its block, so a probe reads that posting
    only: at RocksDB's default 4 KiB two postings of 3.4 kB (48 64-byte codes) shared one, and
    every read fetched both."""
    store = Storage.create(tmp_path / "c", StorageConfig())
    try:
        batch = store.batch()
        rng = np.random.default_rng(0)
        for pid in range(200):  # random bytes: incompressible, as codes are
            batch.put_posting(pid, rng.bytes(nbytes))
        store.write(batch)
        store.flush()
        figures = _table_figures(store, POSTINGS)
        assert figures["# entries"] == 200
        assert figures["# data blocks"] == 200 // per_block
    finally:
        store.close()


def test_create_writes_marker_and_format_version(store: Storage) -> None:
    marker = json.loads((store.path / MARKER).read_text())
    assert marker == {"format_version": FORMAT_VERSION}
    assert store.get_meta("format_version") == str(FORMAT_VERSION).encode()


def test_create_refuses_an_existing_collection(store: Storage) -> None:
    with pytest.raises(CollectionExistsError, match="already exists"):
        Storage.create(store.path, StorageConfig())


def test_create_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(CollectionExistsError, match="not empty"):
        Storage.create(tmp_path, StorageConfig())
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_close_is_idempotent_and_the_collection_reopens(tmp_path: Path) -> None:
    store = Storage.create(tmp_path / "c", StorageConfig())
    batch = store.batch()
    batch.put_meta("x", b"1")
    store.write(batch)
    store.close()
    store.close()
    # the closed object is still referenced here: close() alone must release the database
    again = Storage.open(tmp_path / "c", StorageConfig())
    try:
        assert again.get_meta("x") == b"1"
    finally:
        again.close()


def test_read_only_open_reads(tmp_path: Path) -> None:
    store = Storage.create(tmp_path / "c", StorageConfig())
    batch = store.batch()
    batch.put_meta("x", b"1")
    store.write(batch)
    store.close()
    del store
    ro = Storage.open(tmp_path / "c", StorageConfig(read_only=True))
    try:
        assert ro.get_meta("x") == b"1"
    finally:
        ro.close()


def test_destroy_removes_only_collections(tmp_path: Path) -> None:
    Storage.create(tmp_path / "c", StorageConfig()).close()
    Storage.destroy(tmp_path / "c")
    assert not (tmp_path / "c").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data.txt").write_text("mine")
    with pytest.raises(CollectionNotFoundError):
        Storage.destroy(tmp_path / "d")
    assert (tmp_path / "d" / "data.txt").exists()


# ------------------------------------------------------------------------- bad dirs
def test_open_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CollectionNotFoundError, match="directory does not exist"):
        Storage.open(tmp_path / "nowhere", StorageConfig())


def test_open_directory_that_is_not_a_collection(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CollectionNotFoundError, match=f"{MARKER} file is missing"):
        Storage.open(tmp_path, StorageConfig())


@pytest.mark.parametrize("garbage", ["", "{not json", "[]", '{"format_version": "one"}', "{}"])
def test_open_with_garbage_marker(tmp_path: Path, garbage: str) -> None:
    Storage.create(tmp_path / "c", StorageConfig()).close()
    (tmp_path / "c" / MARKER).write_text(garbage)
    with pytest.raises(CorruptCollectionError, match=f"{MARKER} is unreadable"):
        Storage.open(tmp_path / "c", StorageConfig())


def test_open_with_marker_but_no_database(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION}))
    with pytest.raises(CorruptCollectionError, match="cannot open the database"):
        Storage.open(tmp_path, StorageConfig())


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, 99])
def test_open_other_format_version_names_both(tmp_path: Path, version: int) -> None:
    Storage.create(tmp_path / "c", StorageConfig()).close()
    (tmp_path / "c" / MARKER).write_text(json.dumps({"format_version": version}))
    with pytest.raises(
        FormatVersionError,
        match=f"format version {version}; this anns reads format versions 1, 2, 3, 4, {FORMAT_VERSION}",
    ):
        Storage.open(tmp_path / "c", StorageConfig())


def test_open_with_stored_format_version_disagreeing_with_marker(tmp_path: Path) -> None:
    store = Storage.create(tmp_path / "c", StorageConfig())
    batch = store.batch()
    batch.put_meta("format_version", b"7")
    store.write(batch)
    store.close()
    del store
    with pytest.raises(FormatVersionError, match="format version 7"):
        Storage.open(tmp_path / "c", StorageConfig())
    # the refused open released the database again
    (tmp_path / "c" / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION}))
    with pytest.raises(FormatVersionError):
        Storage.open(tmp_path / "c", StorageConfig())


# ------------------------------------------------------------------- split multi-gets
@pytest.mark.parametrize("io_threads", [1, 2, 5, 16])
def test_multi_gets_split_over_threads_keep_key_order(tmp_path: Path, io_threads: int) -> None:
    store = Storage.create(tmp_path / "c", StorageConfig(io_threads=io_threads))
    try:
        batch = store.batch()
        ids = np.arange(0, 200, 2)
        batch.put_vectors(ids, np.arange(len(ids), dtype=np.float32)[:, None] * [1, 1])
        for pid in range(0, 40, 2):
            batch.put_posting(pid, encode_posting(np.array([pid]), np.full((1, 4), pid, np.uint8)))
        store.write(batch)
        store.flush()
        asked = np.array([7, 0, 198, 3, 100, 42, 199, 2] * 3)
        for _ in range(3):  # cold, then with the block cache holding some of them
            got = store.get_vectors(asked)
            want = [None if i % 2 else np.array([i // 2] * 2, np.float32) for i in asked]
            for g, w in zip(got, want):
                assert (g is None) if w is None else np.array_equal(np.frombuffer(g, "<f4"), w)
            pids = np.array([39, 0, 12, 13, 38, 2])
            blobs = store.get_postings(pids)
            assert [None if b is None else int(decode_posting(b, 4)[0][0]) for b in blobs] == [
                None if p % 2 else p for p in pids.tolist()]
    finally:
        store.close()


def test_a_failed_part_of_a_multi_get_raises_in_the_caller_and_the_threads_go_on() -> None:
    from anns.storage import _ReadThreads

    threads = _ReadThreads(3, "test-io")
    try:
        def square(x: int) -> int:
            if x == 5:
                raise KeyError(x)
            return x * x

        assert threads.start(square, list(range(5)), keep=1).result() == [0, 1, 4, 9, 16]
        with pytest.raises(KeyError):
            threads.start(square, list(range(8))).result()
        assert threads.start(square, [6, 7], keep=2).result() == [36, 49]
    finally:
        threads.shutdown()


def test_the_cache_probe_is_skipped_while_it_finds_little_and_tried_again_now_and_then() -> None:
    from anns.storage import _PROBE_EVERY, _CacheOdds

    odds = _CacheOdds()
    assert odds.worth_probing()
    odds.record(1000, 0)
    tried = [odds.worth_probing() for _ in range(4 * _PROBE_EVERY)]
    assert sum(tried) == 4
    odds.record(1000, 900)  # the cache warmed up
    assert all(odds.worth_probing() for _ in range(10))


def test_a_storage_dropped_unclosed_after_threaded_reads_releases_its_database(
    tmp_path: Path,
) -> None:
    store = Storage.create(tmp_path / "c", StorageConfig(io_threads=4))
    batch = store.batch()
    ids = np.arange(64)
    batch.put_vectors(ids, np.ones((64, 4), np.float32))
    store.write(batch)
    assert all(b is not None for b in store.get_vectors(ids))  # split over the I/O threads
    assert store._pool is not None
    threads = store._pool._threads
    del store, batch  # no close(): only references went away
    Storage.open(tmp_path / "c", StorageConfig()).close()
    for thread in threads:  # and its threads ended
        thread.join(timeout=10)
        assert not thread.is_alive()
