"""anns.Client against a real server over loopback: the library's shape and results, batch
splitting under the server's limits, errors as the library's classes, retries, and the CLI
(`anns serve`, `anns search --server`, `anns ingest`, SIGTERM drain)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import anns
from anns.client import RemoteCollection
from anns.evaluation import clustered_data
from anns_proto.anns.v1 import anns_pb2 as pb
from anns_proto.anns.v1 import anns_pb2_grpc as rpc
from server import RunningServer, ServerConfig, build_server

WAIT = 60.0
CONFIG = {"posting_size": 16, "max_posting_size": 32}
LIMIT = 64 << 10  # a small max_message_bytes: splitting happens on small data


def calls(server: RunningServer, rpc_name: str) -> float:
    value = server.metrics.registry.get_sample_value("anns_grpc_requests_total",
                                                     {"rpc": rpc_name})
    return value or 0.0


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered_data(2000, 16, queries=1500, seed=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = build_server(ServerConfig(root=tmp_path_factory.mktemp("root"), port=0,
                                        max_message_bytes=LIMIT, max_batch=3000))
    running.registry.opened.wait(WAIT)
    yield running
    running.stop(grace=5)


@pytest.fixture
def client(server: RunningServer) -> Iterator[anns.Client]:
    with anns.Client(f"127.0.0.1:{server.port}") as c:
        yield c


def test_import_anns_does_not_import_grpc() -> None:
    code = ("import sys, anns; assert 'grpc' not in sys.modules; "
            "anns.Client; assert 'grpc' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_same_results_as_the_embedded_library(
    tmp_path: Path, server: RunningServer, client: anns.Client,
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    """Congruence: the same writes and searches through the library and through gRPC give
    identical ids, distances and figures."""
    base, all_queries = data
    queries = all_queries[:200]
    remote = client.create_collection("twin", {"dim": 16, **CONFIG})
    local = anns.Collection.create(tmp_path / "twin", anns.IndexConfig(dim=16, **CONFIG))
    try:
        for coll in (local, remote):
            # batches that fit one message: one atomic call each, the same as the library's
            np.testing.assert_array_equal(coll.add(base[:600]), np.arange(600))
            coll.add(base[600:800])
            coll.upsert(base[800:900], np.arange(0, 100))
            assert coll.delete(np.arange(50, 60)) == 10
            coll.add(base[900:1000], np.arange(5000, 5100))
        assert remote.count() == local.count() == 890
        for knobs in ({}, {"max_postings": 2, "eps2": 0.1}, {"refine_factor": 3.0}):
            want = local.search(queries, 10, return_stats=True, **knobs)
            got = remote.search(queries, 10, return_stats=True, **knobs)
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_array_equal(got.distances, want.distances)
            assert got.stats is not None and want.stats is not None
            assert got.stats.postings_probed == want.stats.postings_probed
            assert got.stats.bytes_read == want.stats.bytes_read
            assert got.stats.per_query == want.stats.per_query
        # a batch the client splits into several calls: per-query figures stay on their rows
        calls_before = calls(server, "Search.Search")
        want = local.search(all_queries, 10, return_stats=True, max_postings=2, eps2=0.5)
        got = remote.search(all_queries, 10, return_stats=True, max_postings=2, eps2=0.5)
        assert calls(server, "Search.Search") - calls_before >= 2
        assert got.stats is not None and want.stats is not None
        assert got.stats.queries == want.stats.queries == len(all_queries)
        assert got.stats.per_query == want.stats.per_query
        assert got.stats.per_query.postings_probed.sum() == got.stats.postings_probed
        params = anns.SearchParams(max_postings=3)
        np.testing.assert_array_equal(remote.search(queries, 5, params).ids,
                                      local.search(queries, 5, params).ids)
        np.testing.assert_allclose(remote.get([0, 5050]), local.get([0, 5050]), rtol=1e-5,
                                   atol=1e-6)
        with_vectors = remote.search(queries[:3], 4, return_vectors=True)
        assert with_vectors.vectors is not None and with_vectors.vectors.shape == (3, 4, 16)
        np.testing.assert_allclose(with_vectors.vectors[0, 0],
                                   local.get(with_vectors.ids[0, :1])[0], rtol=1e-5, atol=1e-6)
    finally:
        local.close()
        client.delete_collection("twin")


def test_large_batches_are_split_under_the_server_limit(
    server: RunningServer, client: anns.Client, data: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = data
    assert client.server_info()["max_message_bytes"] == LIMIT
    remote = client.create_collection("split", {"dim": 16, **CONFIG})
    try:
        before = calls(server, "Vectors.Ingest")
        ids = remote.add(base)  # 2000 x 16 float32 = 128 KiB: two messages at least
        assert calls(server, "Vectors.Ingest") == before + 1
        np.testing.assert_array_equal(ids, np.arange(len(base)))
        assert remote.count() == len(base)
        np.testing.assert_allclose(remote.get(ids), base, rtol=1e-5, atol=1e-5)

        before = calls(server, "Search.Search")
        many = remote.search(queries, 10)  # 1500 queries, ~94 KiB of queries and answers
        assert calls(server, "Search.Search") - before >= 2
        pieces = np.concatenate([remote.search(queries[i:i + 100], 10).ids
                                 for i in range(0, len(queries), 100)])
        np.testing.assert_array_equal(many.ids, pieces)
        assert many.ids.shape == (1500, 10) and many.ids.dtype == np.int64
        assert many.distances.dtype == np.float32 and many.ids.flags.writeable
        assert remote.delete(ids) == len(base)
    finally:
        client.delete_collection("split")


def test_one_row_over_the_limit_is_refused_before_sending(client: anns.Client) -> None:
    wide = client.create_collection("wide", {"dim": 20000})
    try:
        with pytest.raises(anns.LimitExceededError, match=str(LIMIT)):
            wide.add(np.ones((1, 20000), np.float32))
    finally:
        client.delete_collection("wide")


def test_errors_are_the_library_classes(
    client: anns.Client, data: tuple[np.ndarray, np.ndarray]
) -> None:
    with pytest.raises(anns.CollectionNotFoundError, match="'nope'"):
        client.collection("nope")
    empty = client.create_collection("errs", {"dim": 16, **CONFIG})
    try:
        with pytest.raises(anns.CollectionExistsError):
            client.create_collection("errs", {"dim": 16})
        with pytest.raises(anns.EmptyCollectionError):
            empty.search(data[1][:2], 3)
        empty.add(data[0][:300])
        with pytest.raises(anns.IdExistsError, match="upsert"):
            empty.add(data[0][:1], ids=[5])
        with pytest.raises(anns.DimensionMismatchError):
            empty.search(data[1][:, :4], 3)
        with pytest.raises(anns.NotFoundError, match="999999"):
            empty.get([999999])
        with pytest.raises(anns.FailedPreconditionError, match="anns tune"):
            empty.search(data[1][:2], 3, target_recall=0.9)
        with pytest.raises(anns.InvalidArgumentError, match="refine_factor"):
            empty.search(data[1][:2], 3, refine_factor=0.1)
        assert empty.count() == 300  # nothing stored was lost
    finally:
        client.delete_collection("errs")
    with pytest.raises(anns.InvalidArgumentError, match="not allowed"):
        client.create_collection(".hidden", {"dim": 4})


def test_list_collections(client: anns.Client) -> None:
    client.create_collection("listed", {"dim": 4})
    try:
        listed = {c["name"]: c for c in client.list_collections()}
        assert listed["listed"]["state"] == "ready" and listed["listed"]["count"] == 0
        assert listed["listed"]["config"]["dim"] == 4 and "path" not in listed["listed"]
    finally:
        client.delete_collection("listed")


def test_only_safe_calls_are_retried(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_open(path: Path, storage: anns.StorageConfig) -> anns.Collection:
        release.wait(WAIT)
        return anns.Collection.open(path, storage)

    anns.Collection.create(tmp_path / "later", anns.IndexConfig(dim=4)).close()
    server = build_server(ServerConfig(root=tmp_path, port=0), opener=slow_open)
    try:
        with anns.Client(f"127.0.0.1:{server.port}", retries=8) as c:
            # a write is not retried: one attempt, UNAVAILABLE raised as the RpcError
            with pytest.raises(grpc.RpcError) as info:
                c.call(c.vectors.Upsert, pb.UpsertRequest(
                    collection="later", vectors=pb.VectorBatch(data=bytes(16), dim=4),
                    mode=pb.WRITE_MODE_ADD))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert calls(server, "Vectors.Upsert") == 1

            found: list[RemoteCollection] = []
            reader = threading.Thread(target=lambda: found.append(c.collection("later")))
            reader.start()
            registry = server.metrics.registry
            deadline = time.monotonic() + WAIT
            while not registry.get_sample_value(
                    "anns_grpc_errors_total",
                    {"rpc": "Collections.GetCollection", "code": "UNAVAILABLE"}):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            release.set()  # the read's next attempt finds the collection open
            reader.join(WAIT)
            assert found and found[0].dim == 4
    finally:
        release.set()
        server.stop(grace=5)


# ------------------------------------------------------------------------------------- CLI
def test_cli_ingest_into_a_local_collection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: tuple[np.ndarray, np.ndarray]
) -> None:
    from anns.cli import main

    np.save(tmp_path / "v.npy", data[0][:700])
    np.save(tmp_path / "ids.npy", np.arange(100, 800, dtype=np.int64))
    assert main(["ingest", str(tmp_path / "c"), "--vectors", str(tmp_path / "v.npy"), "--ids",
                 str(tmp_path / "ids.npy"), "--create", "--batch-rows", "300"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["written"] == 700 and "700/700" in err
    assert main(["ingest", str(tmp_path / "c"), "--vectors", str(tmp_path / "v.npy"),
                 "--no-progress"]) == 0  # ids assigned after the largest stored
    assert json.loads(capsys.readouterr()[0])["count"] == 1400
    assert main(["ingest", str(tmp_path / "c"), "--vectors", str(tmp_path / "v.npy"), "--ids",
                 str(tmp_path / "ids.npy"), "--no-progress"]) == 1  # add refuses stored ids
    assert "already stored" in capsys.readouterr()[1]
    with anns.Collection.open(tmp_path / "c") as coll:
        assert coll.count() == 1400 and coll.contains([100, 799, 800, 1499]).all()


def anns_cli(*args: str | Path, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anns.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_serve_search_ingest_and_drain_on_sigterm(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = data
    root = tmp_path / "root"
    anns.build(root / "c", base, config=CONFIG)
    np.save(tmp_path / "q.npy", queries[:100])
    np.save(tmp_path / "new.npy", base[:1000])
    with anns.Collection.open(root / "c") as coll:
        expected = coll.search(queries[:100], 10).ids

    log_path = tmp_path / "serve.log"
    log_file = log_path.open("w")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "anns.cli", "serve", str(root), "--port", "0", "--grace", "30",
         "--max-message-mb", "0.0625"],
        stdout=subprocess.PIPE, stderr=log_file, text=True,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        address = f"127.0.0.1:{started['port']}"
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + WAIT
            while health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT).status != \
                    health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline
                time.sleep(0.05)

        done = anns_cli("search", "c", "--server", address, "--queries", tmp_path / "q.npy",
                        "-k", "10", "--out", tmp_path / "ids.npy")
        assert done.returncode == 0, done.stderr
        np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), expected)
        assert json.loads(done.stdout)["queries"] == 100

        done = anns_cli("ingest", "fresh", "--server", address, "--create", "--vectors",
                        tmp_path / "new.npy", "--batch-rows", "250")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["written"] == 1000
        assert "ingest fresh" in done.stderr and "1000/1000" in done.stderr  # progress bar
        done = anns_cli("info", "fresh", "--server", address)
        assert done.returncode == 0 and json.loads(done.stdout)["count"] == 1000

        done = anns_cli("search", "nope", "--server", address, "--queries", tmp_path / "q.npy")
        assert done.returncode == 1 and "no collection named 'nope'" in done.stderr

        # SIGTERM while an Ingest stream is in flight: the stream is drained, not cut
        acked, signalled = threading.Event(), threading.Event()

        def batches() -> Iterator[pb.UpsertRequest]:
            for i in range(2):
                rows = base[1000 + 100 * i:1100 + 100 * i]
                yield pb.UpsertRequest(collection="fresh", mode=pb.WRITE_MODE_ADD,
                                       vectors=pb.VectorBatch(data=rows.tobytes(), dim=16))
                acked.wait(WAIT)
                signalled.wait(WAIT)

        with grpc.insecure_channel(address) as channel:
            stream = rpc.VectorsStub(channel).Ingest(batches(), timeout=WAIT)
            first = next(stream)
            proc.send_signal(signal.SIGTERM)
            with grpc.insecure_channel(address) as probe:  # wait until the signal took hold
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline:
                    try:
                        status = health_pb2_grpc.HealthStub(probe).Check(
                            health_pb2.HealthCheckRequest(), timeout=5).status
                    except grpc.RpcError:
                        break
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    time.sleep(0.02)
            acked.set()
            signalled.set()
            rest = list(stream)
        assert [first.total_written, *[a.total_written for a in rest]] == [100, 200]
        assert proc.wait(WAIT) == 0
        logs = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert any(entry["msg"] == "server stopped" for entry in logs)
        failed = [e for e in logs if e["msg"] == "call failed"]
        assert failed and failed[0]["code"] == "NOT_FOUND" and "'nope'" in failed[0]["error"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        proc.stdout.close()  # type: ignore[union-attr]
        log_file.close()
    with anns.Collection.open(root / "fresh") as coll:  # closed cleanly, nothing lost
        assert coll.count() == 1200


def test_a_bad_row_ends_an_ingest_cleanly_with_what_was_written(
    client: anns.Client, data: tuple[np.ndarray, np.ndarray]
) -> None:
    remote = client.create_collection("ingest-bad", {"dim": 16, **CONFIG})
    try:
        x = np.resize(data[0], (1000, 16)).copy()
        x[700, 5] = np.nan
        with pytest.raises(anns.NonFiniteError,
                           match=r"first at row 700 \(700 of 1000 vectors were written"):
            remote.ingest(x, batch_rows=100)
        assert remote.count() == 700  # the batches before the bad one, as the library writes
    finally:
        client.delete_collection("ingest-bad")


def test_a_remote_collection_takes_the_current_model_s_vectors(tmp_path: Path) -> None:
    from test_compat import NEW_DIM, two_models

    old, new, _ = two_models(1200, seed=3)
    with anns.Collection.create(tmp_path / "m", anns.IndexConfig(dim=32)) as local:
        local.add(old[:1000], np.arange(1000))
        local.add_model("v2", old[:600], new[:600])  # current: 48 dims
        want = local.search(new[1000:1010], 5).ids
    running = build_server(ServerConfig(root=tmp_path, port=0))
    try:
        running.registry.opened.wait(WAIT)
        with anns.Client(f"127.0.0.1:{running.port}") as c:
            remote = c.collection("m")
            np.testing.assert_array_equal(remote.search(new[1000:1010], 5).ids, want)
            assert remote.add(new[1010:1012]).tolist() == [1000, 1001]
            with pytest.raises(anns.DimensionMismatchError, match=f"model 'v2' dim {NEW_DIM}"):
                remote.search(old[1000:1010], 5)  # the base model's, not the current one's
    finally:
        running.stop(grace=5)


def test_search_params_given_are_used_as_given_not_over_the_tuned_profile(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    from anns.tuning import Profile

    base, queries = data
    with anns.Collection.create(tmp_path / "p", anns.IndexConfig(dim=16, **CONFIG)) as local:
        local.add(base[:1500])
        # a default profile far from the defaults: one posting, a rerank on 4 of 16 dims
        local._store_profiles({0.5: Profile(0.5, {"max_postings": 1, "d_rerank": 4},
                                            0.5, 1.0, "batch", 1, 10, 16)}, 0.5)
        given = local.search(queries[:20], 10, anns.SearchParams())
        profiled = local.search(queries[:20], 10)
        knob = local.search(queries[:20], 10, anns.SearchParams(), max_postings=2)
    assert not np.array_equal(given.ids, profiled.ids)  # else this test shows nothing
    running = build_server(ServerConfig(root=tmp_path, port=0))
    try:
        running.registry.opened.wait(WAIT)
        with anns.Client(f"127.0.0.1:{running.port}") as c:
            remote = c.collection("p")
            np.testing.assert_array_equal(
                remote.search(queries[:20], 10, anns.SearchParams()).ids, given.ids)
            np.testing.assert_array_equal(remote.search(queries[:20], 10).ids, profiled.ids)
            np.testing.assert_array_equal(
                remote.search(queries[:20], 10, anns.SearchParams(), max_postings=2).ids,
                knob.ids)
    finally:
        running.stop(grace=5)
