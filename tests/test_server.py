"""The gRPC server over loopback, through the raw generated stubs: every RPC, every status code
from a real bad request, limits, auth, TLS, health, reflection, metrics and concurrency."""

from __future__ import annotations

import datetime
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import anns
from anns.evaluation import clustered_data
from anns.storage import decode_vectors
from anns_proto.anns.v1 import anns_pb2 as pb
from anns_proto.anns.v1 import anns_pb2_grpc as rpc
from server import RunningServer, ServerConfig, build_server
from server.app import SERVICES
from server.servicers import Limits, _result_vectors
from test_compat import NEW_DIM, OLD_DIM, two_models

LIMIT = 256 << 10  # max_message_bytes of the test server: small, so limits are cheap to hit
MAX_BATCH = 5000
WAIT = 60.0  # generous: the machine may be loaded
SMALL_CONFIG = {"posting_size": 16, "max_posting_size": 32}


def start(root: Path, **options: Any) -> RunningServer:
    return build_server(ServerConfig(root=root, port=0, **{
        "max_message_bytes": LIMIT, "max_batch": MAX_BATCH, **options}))


def vecs(x: np.ndarray) -> pb.VectorBatch:
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.VectorBatch(data=x.tobytes(), dim=x.shape[1])


def ids_bytes(ids: Any) -> bytes:
    return np.asarray(ids, dtype="<i8").tobytes()


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.collections = rpc.CollectionsStub(channel)
        self.vectors = rpc.VectorsStub(channel)
        self.search = rpc.SearchStub(channel)
        self.server = rpc.ServerStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


def wait_serving(stubs: Stubs, **kw: Any) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        reply = stubs.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT, **kw)
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.02)
    raise AssertionError("server never reported SERVING")


def status_of(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value  # type: ignore[return-value]


def trailer(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("anns-error")  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered_data(1500, 16, queries=40, seed=3)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> Path:
    root = tmp_path_factory.mktemp("root")
    anns.build(root / "base", data[0], config=SMALL_CONFIG)
    anns.Collection.create(root / "empty", anns.IndexConfig(dim=16)).close()
    (root / "broken").mkdir()  # a collection whose marker is unreadable: DATA_LOSS
    (root / "broken" / "ANNS_COLLECTION").write_text("not json")
    (root / "stray").mkdir()  # not a collection: ignored
    return root


@pytest.fixture(scope="module")
def expected(root: Path, data: tuple[np.ndarray, np.ndarray]) -> anns.SearchResult:
    with anns.Collection.open(root / "base", anns.StorageConfig(read_only=True)) as coll:
        return coll.search(data[1], 10, return_stats=True)


@pytest.fixture(scope="module")
def running(root: Path, expected: anns.SearchResult) -> Iterator[RunningServer]:
    server = start(root, metrics_port=0)
    yield server
    server.stop(grace=5)


@pytest.fixture(scope="module")
def stubs(running: RunningServer) -> Iterator[Stubs]:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        s = Stubs(channel)
        wait_serving(s)
        yield s


# ------------------------------------------------------------------------------ every RPC
def test_server_info(stubs: Stubs) -> None:
    info = stubs.server.GetServerInfo(pb.GetServerInfoRequest(), timeout=WAIT)
    assert info.version == anns.__version__
    assert (info.max_message_bytes, info.max_k, info.max_batch) == (LIMIT, anns.MAX_K, MAX_BATCH)
    assert not info.auth_required


def test_get_and_list_collections(stubs: Stubs) -> None:
    got = stubs.collections.GetCollection(pb.GetCollectionRequest(name="base"), timeout=WAIT)
    assert got.state == pb.COLLECTION_STATE_READY and got.count == 1500
    assert got.config.dim == 16 and got.config.metric == pb.METRIC_L2
    assert got.config.posting_size == SMALL_CONFIG["posting_size"] and got.postings > 1
    listed = stubs.collections.ListCollections(pb.ListCollectionsRequest(), timeout=WAIT)
    states = {c.name: c.state for c in listed.collections}
    assert states == {"base": pb.COLLECTION_STATE_READY, "empty": pb.COLLECTION_STATE_READY,
                      "broken": pb.COLLECTION_STATE_FAILED}
    broken = next(c for c in listed.collections if c.name == "broken")
    assert "unreadable" in broken.error
    assert str(Path.cwd()) not in got.info_json and "path" not in got.info_json


def test_search_returns_what_the_library_returns(
    stubs: Stubs, data: tuple[np.ndarray, np.ndarray], expected: anns.SearchResult
) -> None:
    queries = data[1]
    resp = stubs.search.Search(pb.SearchRequest(
        collection="base", queries=vecs(queries), k=10, return_stats=True, return_vectors=True,
    ), timeout=WAIT)
    ids = np.frombuffer(resp.ids, dtype="<i8").reshape(len(queries), 10)
    dist = np.frombuffer(resp.distances, dtype="<f4").reshape(len(queries), 10)
    np.testing.assert_array_equal(ids, expected.ids)
    np.testing.assert_array_equal(dist, expected.distances)
    got = np.frombuffer(resp.vectors.data, dtype="<f4").reshape(len(queries), 10, 16)
    np.testing.assert_allclose(got, data[0][ids], rtol=1e-5, atol=1e-5)
    assert resp.stats.queries == len(queries)
    assert resp.stats.postings_probed > 0 and resp.stats.bytes_read > 0
    assert resp.stats.candidates_scored > 0 and set(resp.stats.seconds) >= {"route", "rerank"}
    # per-query figures: packed arrays in query order, the library's own
    assert expected.stats is not None
    per_query = resp.stats.per_query
    for name, dtype in (("postings_probed", "<u4"), ("candidates_scored", "<u8"),
                        ("bytes_read", "<u8"), ("reranked", "<u4")):
        got_figures = np.frombuffer(getattr(per_query, name), dtype=dtype)
        np.testing.assert_array_equal(got_figures, getattr(expected.stats.per_query, name))
    assert np.frombuffer(per_query.postings_probed, "<u4").sum() == resp.stats.postings_probed
    assert np.frombuffer(per_query.reranked, "<u4").sum() == resp.stats.reranked


def test_search_knobs_and_profile(stubs: Stubs, data: tuple[np.ndarray, np.ndarray]) -> None:
    one = pb.SearchParams(max_postings=1, eps2=0.0)
    narrow = stubs.search.Search(pb.SearchRequest(collection="base", queries=vecs(data[1]),
                                                  k=10, params=one, return_stats=True))
    wide = stubs.search.Search(pb.SearchRequest(collection="base", queries=vecs(data[1]),
                                                k=10, return_stats=True))
    assert narrow.stats.postings_probed == len(data[1])  # exactly one posting per query
    assert wide.stats.postings_probed > narrow.stats.postings_probed


def test_write_read_delete_lifecycle(stubs: Stubs, data: tuple[np.ndarray, np.ndarray]) -> None:
    base = data[0]
    created = stubs.collections.CreateCollection(pb.CreateCollectionRequest(
        name="life", config=pb.CollectionConfig(dim=16, posting_size=16, max_posting_size=32,
                                                codec=pb.CODEC_FLAT)), timeout=WAIT)
    assert created.state == pb.COLLECTION_STATE_READY and created.count == 0
    assert created.config.codec == pb.CODEC_FLAT and created.config.replica_cap == 8
    # add without ids: the server numbers them
    ack = stubs.vectors.Upsert(pb.UpsertRequest(collection="life", vectors=vecs(base[:300]),
                                                mode=pb.WRITE_MODE_ADD), timeout=WAIT)
    assert ack.written == 300 and ack.total_written == 300
    np.testing.assert_array_equal(np.frombuffer(ack.ids, "<i8"), np.arange(300))
    # upsert replaces
    ack = stubs.vectors.Upsert(pb.UpsertRequest(collection="life", vectors=vecs(base[300:302]),
                                                ids=ids_bytes([0, 1])), timeout=WAIT)
    assert ack.written == 2
    # a stream of batches, each acknowledged
    batches = [pb.UpsertRequest(collection="life" if i == 0 else "", mode=pb.WRITE_MODE_ADD,
                                vectors=vecs(base[400 + 100 * i: 500 + 100 * i]),
                                ids=ids_bytes(np.arange(400 + 100 * i, 500 + 100 * i)))
               for i in range(3)]
    acks = list(stubs.vectors.Ingest(iter(batches), timeout=WAIT))
    assert [(a.batch, a.written, a.total_written) for a in acks] == [
        (0, 100, 100), (1, 100, 200), (2, 100, 300)]
    got = stubs.vectors.Get(pb.GetVectorsRequest(collection="life", ids=ids_bytes([0, 450])))
    np.testing.assert_allclose(np.frombuffer(got.vectors.data, "<f4").reshape(2, 16),
                               base[[300, 450]], rtol=1e-5, atol=1e-5)
    deleted = stubs.vectors.Delete(pb.DeleteVectorsRequest(collection="life",
                                                           ids=ids_bytes([0, 450, 10**9])))
    assert deleted.deleted == 2
    info = stubs.collections.GetCollection(pb.GetCollectionRequest(name="life"))
    assert info.count == 300 + 300 - 2
    stubs.collections.DeleteCollection(pb.DeleteCollectionRequest(name="life"), timeout=WAIT)
    err = status_of(lambda: stubs.collections.GetCollection(pb.GetCollectionRequest(name="life")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_integer_vector_dtype_over_the_wire(stubs: Stubs) -> None:
    """A uint8 collection created over gRPC stores integers exactly; a vector it cannot hold
    is INVALID_ARGUMENT naming the value, and nothing is written."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (200, 16)).astype(np.float32)
    created = stubs.collections.CreateCollection(pb.CreateCollectionRequest(
        name="bytes", config=pb.CollectionConfig(dim=16, posting_size=16,
                                                 vector_dtype=pb.VECTOR_DTYPE_UINT8)),
        timeout=WAIT)
    assert created.config.vector_dtype == pb.VECTOR_DTYPE_UINT8
    stubs.vectors.Upsert(pb.UpsertRequest(collection="bytes", vectors=vecs(x),
                                          ids=ids_bytes(np.arange(200))), timeout=WAIT)
    err = status_of(lambda: stubs.vectors.Upsert(pb.UpsertRequest(
        collection="bytes", vectors=vecs(x[:2] + 0.5), ids=ids_bytes([0, 1])), timeout=WAIT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "uint8" in err.details()
    got = stubs.vectors.Get(pb.GetVectorsRequest(collection="bytes", ids=ids_bytes([0, 1])))
    np.testing.assert_array_equal(np.frombuffer(got.vectors.data, "<f4").reshape(2, 16), x[:2])
    err = status_of(lambda: stubs.collections.CreateCollection(pb.CreateCollectionRequest(
        name="bytes2", config=pb.CollectionConfig(dim=16, metric=pb.METRIC_COSINE,
                                                  vector_dtype=pb.VECTOR_DTYPE_INT8))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "cosine" in err.details()
    stubs.collections.DeleteCollection(pb.DeleteCollectionRequest(name="bytes"), timeout=WAIT)


# ----------------------------------------------------------------------- model versions
def _twins(base: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A collection with a registered (not current) model version ``v2``, and a byte-for-byte
    copy of it under a server root: (library path, server root, old vectors, new vectors)."""
    old, new, _ = two_models(1400, seed=9)
    local = base / "local"
    coll = anns.Collection.create(local, anns.IndexConfig(dim=OLD_DIM, posting_size=32))
    coll.add(old[:1200], np.arange(1200))
    coll.add_model("v2", old[:600], new[:600], current=False)
    coll.close()
    shutil.copytree(local, base / "root" / "m")
    return local, base / "root", old, new


def test_model_field_is_congruent_with_the_library(tmp_path: Path) -> None:
    """Searches and writes naming a model version do through gRPC what they do in the library;
    an unknown version is NOT_FOUND, a vector of another version's dim INVALID_ARGUMENT."""
    local_path, root, old, new = _twins(tmp_path)
    queries = new[1200:1260]
    server = start(root)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, \
                anns.Collection.open(local_path) as local:
            stubs = Stubs(channel)
            wait_serving(stubs)
            V, S = stubs.vectors, stubs.search

            def search(model: str, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                reply = S.Search(pb.SearchRequest(collection="m", queries=vecs(q), k=10,
                                                  model=model), timeout=WAIT)
                return (np.frombuffer(reply.ids, "<i8").reshape(len(q), 10),
                        np.frombuffer(reply.distances, "<f4").reshape(len(q), 10))

            def congruent() -> None:
                for model, q in (("v2", queries), ("", old[1200:1260]), ("default", old[1200:])):
                    ids, distances = search(model, q)
                    expected = local.search(q, 10, model=model or None)
                    np.testing.assert_array_equal(ids, expected.ids)
                    # the server's threads may round BLAS products differently by an ulp
                    np.testing.assert_allclose(distances, expected.distances, rtol=1e-6)

            congruent()  # every stored vector is the base model's
            # writes naming v2: an upsert, an add of new ids, a stream; the library the same
            V.Upsert(pb.UpsertRequest(collection="m", vectors=vecs(new[:100]),
                                      ids=ids_bytes(np.arange(100)), model="v2"), timeout=WAIT)
            local.upsert(new[:100], np.arange(100), model="v2")
            V.Upsert(pb.UpsertRequest(collection="m", vectors=vecs(new[1300:1320]),
                                      ids=ids_bytes(np.arange(1300, 1320)), model="v2",
                                      mode=pb.WRITE_MODE_ADD), timeout=WAIT)
            local.add(new[1300:1320], np.arange(1300, 1320), model="v2")
            stream = [pb.UpsertRequest(collection="m" if i == 0 else "", model="v2",
                                       vectors=vecs(new[100 + 50 * i: 150 + 50 * i]),
                                       ids=ids_bytes(np.arange(100 + 50 * i, 150 + 50 * i)))
                      for i in range(2)]
            assert [a.total_written for a in V.Ingest(iter(stream), timeout=WAIT)] == [50, 100]
            local.upsert(new[100:200], np.arange(100, 200), model="v2")
            # stored under v2: the figures, and the version every record carries
            info = json.loads(stubs.collections.GetCollection(
                pb.GetCollectionRequest(name="m"), timeout=WAIT).info_json)["models"]
            assert info == local.models()
            assert info["versions"]["v2"]["count"] == 220
            assert info["versions"]["default"]["count"] == 1000
            written = np.r_[np.arange(200), np.arange(1300, 1320)]
            with server.registry.use("m") as served:
                _, versions = decode_vectors(served._storage.get_vectors(written), OLD_DIM)
                assert (versions == served._models.get("v2").index).all()
            congruent()  # mixed gallery: still the library's ids and distances

            bad = [
                ("unknown model search", lambda: S.Search(pb.SearchRequest(
                    collection="m", queries=vecs(queries[:2]), k=5, model="nope")),
                 "NOT_FOUND", ["'nope'", "v2"]),
                ("unknown model write", lambda: V.Upsert(pb.UpsertRequest(
                    collection="m", vectors=vecs(new[:2]), ids=ids_bytes([0, 1]),
                    model="nope")), "NOT_FOUND", ["'nope'"]),
                ("base dim for v2 search", lambda: S.Search(pb.SearchRequest(
                    collection="m", queries=vecs(old[:2]), k=5, model="v2")),
                 "INVALID_ARGUMENT", [str(OLD_DIM), str(NEW_DIM)]),
                ("base dim for v2 write", lambda: V.Upsert(pb.UpsertRequest(
                    collection="m", vectors=vecs(old[:2]), ids=ids_bytes([0, 1]),
                    model="v2")), "INVALID_ARGUMENT", [str(OLD_DIM), str(NEW_DIM)]),
                ("v2 dim for the base model", lambda: S.Search(pb.SearchRequest(
                    collection="m", queries=vecs(new[:2]), k=5)),
                 "INVALID_ARGUMENT", [str(OLD_DIM), str(NEW_DIM)]),
            ]
            for label, call, code, needles in bad:
                err = status_of(call)
                assert err.code().name == code, (label, err.code(), err.details())
                for needle in needles:
                    assert needle in f"{err.details()} {trailer(err)}", (label, needle)
            after = json.loads(stubs.collections.GetCollection(
                pb.GetCollectionRequest(name="m"), timeout=WAIT).info_json)["models"]
            assert after == info  # the refused writes stored nothing
    finally:
        server.stop(grace=5)


# ------------------------------------------------------------------- status codes, for real
def _bad_requests(stubs: Stubs, q: np.ndarray) -> list[tuple[str, Callable[[], Any], str,
                                                              list[str]]]:
    S, V, C = stubs.search.Search, stubs.vectors, stubs.collections
    nan = q[:2].copy()
    nan[1, 3] = np.nan
    return [
        ("wrong dim", lambda: S(pb.SearchRequest(collection="base", queries=vecs(q[:, :8]), k=5)),
         "INVALID_ARGUMENT", ["dim 8", "dim 16", "DimensionMismatchError"]),
        ("ragged bytes", lambda: S(pb.SearchRequest(
            collection="base", queries=pb.VectorBatch(data=b"\0" * 70, dim=16), k=5)),
         "INVALID_ARGUMENT", ["70 bytes", "dim 16"]),
        ("nan", lambda: V.Upsert(pb.UpsertRequest(collection="base", vectors=vecs(nan),
                                                  ids=ids_bytes([5000, 5001]))),
         "INVALID_ARGUMENT", ["NaN", "NonFiniteError"]),
        ("duplicate ids", lambda: V.Upsert(pb.UpsertRequest(
            collection="base", vectors=vecs(q[:2]), ids=ids_bytes([7, 7]))),
         "INVALID_ARGUMENT", ["duplicate", "7"]),
        ("bad name", lambda: C.GetCollection(pb.GetCollectionRequest(name="../etc")),
         "INVALID_ARGUMENT", ["../etc"]),
        ("bad config", lambda: C.CreateCollection(pb.CreateCollectionRequest(
            name="bad", config=pb.CollectionConfig(dim=16, posting_size=0))),
         "INVALID_ARGUMENT", ["posting_size"]),
        ("bad knob", lambda: S(pb.SearchRequest(collection="base", queries=vecs(q), k=5,
                                                params=pb.SearchParams(refine_factor=0.5))),
         "INVALID_ARGUMENT", ["refine_factor"]),
        ("k zero", lambda: S(pb.SearchRequest(collection="base", queries=vecs(q), k=0)),
         "INVALID_ARGUMENT", ["k must be positive"]),
        ("unknown collection", lambda: S(pb.SearchRequest(collection="nope", queries=vecs(q),
                                                          k=5)),
         "NOT_FOUND", ["'nope'"]),
        ("missing ids", lambda: V.Get(pb.GetVectorsRequest(collection="base",
                                                          ids=ids_bytes([3, 10**9]))),
         "NOT_FOUND", ["1000000000"]),
        ("unknown model", lambda: S(pb.SearchRequest(collection="base", queries=vecs(q), k=5,
                                                     model="v2")),
         "NOT_FOUND", ["'v2'"]),
        ("collection exists", lambda: C.CreateCollection(pb.CreateCollectionRequest(
            name="base", config=pb.CollectionConfig(dim=16))),
         "ALREADY_EXISTS", ["'base'"]),
        ("id exists", lambda: V.Upsert(pb.UpsertRequest(collection="base", vectors=vecs(q[:1]),
                                                        ids=ids_bytes([3]),
                                                        mode=pb.WRITE_MODE_ADD)),
         "ALREADY_EXISTS", ["IdExistsError", "3"]),
        ("k over limit", lambda: S(pb.SearchRequest(collection="base", queries=vecs(q), k=2000)),
         "RESOURCE_EXHAUSTED", ["2000", str(anns.MAX_K)]),
        ("batch over limit", lambda: V.Delete(pb.DeleteVectorsRequest(
            collection="base", ids=ids_bytes(np.arange(10**6, 10**6 + MAX_BATCH + 1)))),
         "RESOURCE_EXHAUSTED", [str(MAX_BATCH + 1), str(MAX_BATCH)]),
        ("response over limit", lambda: S(pb.SearchRequest(
            collection="base", queries=vecs(np.repeat(q, 10, axis=0)), k=1000)),
         "RESOURCE_EXHAUSTED", [str(LIMIT), "fewer queries"]),
        ("search empty", lambda: S(pb.SearchRequest(collection="empty", queries=vecs(q), k=5)),
         "FAILED_PRECONDITION", ["empty"]),
        ("no profile", lambda: S(pb.SearchRequest(collection="base", queries=vecs(q), k=5,
                                                  params=pb.SearchParams(target_recall=0.9))),
         "FAILED_PRECONDITION", ["anns tune"]),
        ("upsert without ids", lambda: V.Upsert(pb.UpsertRequest(collection="base",
                                                                 vectors=vecs(q[:1]))),
         "INVALID_ARGUMENT", ["ids"]),
        ("corrupt collection", lambda: S(pb.SearchRequest(collection="broken", queries=vecs(q),
                                                          k=5)),
         "DATA_LOSS", ["unreadable"]),
        ("unknown enum value", lambda: C.CreateCollection(pb.CreateCollectionRequest(
            name="odd", config=pb.CollectionConfig(dim=16, metric=9))),
         "INVALID_ARGUMENT", ["metric 9", "Metric"]),
        ("unknown write mode", lambda: V.Upsert(pb.UpsertRequest(
            collection="base", vectors=vecs(q[:1]), ids=ids_bytes([3]), mode=9)),
         "INVALID_ARGUMENT", ["write mode 9"]),
        ("get response over limit", lambda: V.Get(pb.GetVectorsRequest(
            collection="base", ids=ids_bytes(np.arange(4000)))),
         "RESOURCE_EXHAUSTED", ["4000 ids", str(LIMIT), "fewer ids"]),
    ]


def test_every_status_code_from_a_real_bad_request(
    stubs: Stubs, data: tuple[np.ndarray, np.ndarray]
) -> None:
    count_before = stubs.collections.GetCollection(pb.GetCollectionRequest(name="base")).count
    for label, call, code, needles in _bad_requests(stubs, data[1]):
        err = status_of(call)
        assert err.code().name == code, (label, err.code(), err.details())
        text = f"{err.details()} {trailer(err)}"
        for needle in needles:
            assert needle in text, (label, needle, text)
    # nothing stored was lost or changed by the bad writes
    after = stubs.collections.GetCollection(pb.GetCollectionRequest(name="base"))
    assert after.count == count_before == 1500


def test_message_near_the_limit_passes_and_over_it_names_the_limit(
    stubs: Stubs, data: tuple[np.ndarray, np.ndarray]
) -> None:
    row = 16 * 4
    near = (LIMIT - 1024) // row
    queries = np.resize(data[1], (near, 16))
    request = pb.SearchRequest(collection="base", queries=vecs(queries), k=1)
    assert LIMIT - 1024 < request.ByteSize() <= LIMIT
    resp = stubs.search.Search(request, timeout=WAIT)
    assert resp.num_queries == near
    over = pb.SearchRequest(collection="base", queries=vecs(np.resize(data[1], (near + 40, 16))),
                            k=1)
    assert over.ByteSize() > LIMIT
    err = status_of(lambda: stubs.search.Search(over, timeout=WAIT))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT) in err.details() and str(over.ByteSize()) in err.details()
    # far over: refused by the transport, still RESOURCE_EXHAUSTED
    huge = pb.UpsertRequest(collection="base", vectors=pb.VectorBatch(
        data=b"\0" * (3 * LIMIT), dim=16))
    assert status_of(lambda: stubs.vectors.Upsert(huge, timeout=WAIT)).code() == \
        grpc.StatusCode.RESOURCE_EXHAUSTED


def test_response_limit_counts_the_per_query_figures(tmp_path: Path) -> None:
    # 24 bytes of figures per query: a response that fits without them may not with them
    limits = Limits(ServerConfig(root=tmp_path, max_message_bytes=LIMIT, max_batch=1 << 20))
    q = (LIMIT - 4096) // 12 - 10  # k=1: 12 bytes of ids and distances per query
    limits.search(q, 1, 16, with_vectors=False, with_stats=False)
    with pytest.raises(anns.LimitExceededError, match=f"per-query stats .* {LIMIT} bytes"):
        limits.search(q, 1, 16, with_vectors=False, with_stats=True)


def test_unavailable_while_a_collection_opens(tmp_path: Path, root: Path) -> None:
    release = threading.Event()

    def slow_open(path: Path, storage: anns.StorageConfig) -> anns.Collection:
        release.wait(WAIT)
        return anns.Collection.open(path, storage)

    anns.Collection.create(tmp_path / "later", anns.IndexConfig(dim=4)).close()
    server = build_server(ServerConfig(root=tmp_path, port=0), opener=slow_open)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            s = Stubs(channel)
            check = s.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=WAIT)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            err = status_of(lambda: s.collections.GetCollection(
                pb.GetCollectionRequest(name="later"), timeout=WAIT))
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "opened" in err.details()
            listed = s.collections.ListCollections(pb.ListCollectionsRequest(), timeout=WAIT)
            assert [c.state for c in listed.collections] == [pb.COLLECTION_STATE_OPENING]
            release.set()
            wait_serving(s)
            got = s.collections.GetCollection(pb.GetCollectionRequest(name="later"))
            assert got.state == pb.COLLECTION_STATE_READY
    finally:
        release.set()
        server.stop(grace=5)


def test_a_collection_that_failed_to_open_unexpectedly_is_data_loss(tmp_path: Path) -> None:
    def failing_open(path: Path, storage: anns.StorageConfig) -> anns.Collection:
        raise ValueError("config: metric 'l3' is not one of l2, ip, cosine")

    anns.Collection.create(tmp_path / "odd", anns.IndexConfig(dim=4)).close()
    server = build_server(ServerConfig(root=tmp_path, port=0), opener=failing_open)
    try:
        server.registry.opened.wait(WAIT)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            err = status_of(lambda: Stubs(channel).search.Search(pb.SearchRequest(
                collection="odd", queries=vecs(np.ones((1, 4), np.float32)), k=1), timeout=WAIT))
        assert err.code() == grpc.StatusCode.DATA_LOSS and "metric 'l3'" in err.details()
        assert trailer(err) == "CorruptCollectionError"
    finally:
        server.stop(grace=5)


def test_result_vectors_of_ids_deleted_between_its_reads_are_zeros() -> None:
    class Racing:  # contains() sees ids 3 and 5; 5 is deleted before the first get()
        dim, deleted = 2, False

        def contains(self, ids: np.ndarray) -> np.ndarray:
            return ids != 5 if self.deleted else np.ones(len(ids), bool)

        def get(self, ids: np.ndarray) -> np.ndarray:
            if 5 in ids.tolist():
                self.deleted = True
                raise anns.NotFoundError("1 id(s) not stored, e.g. [5]")
            return np.full((len(ids), 2), 7.0, np.float32)

    out = _result_vectors(Racing(), np.array([[3, 5, -1]]))  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, [[7, 7], [0, 0], [0, 0]])


def test_deadline_between_ingest_batches(stubs: Stubs, data: tuple[np.ndarray, np.ndarray]) -> None:
    stubs.collections.CreateCollection(pb.CreateCollectionRequest(
        name="timed", config=pb.CollectionConfig(dim=16, posting_size=16)), timeout=WAIT)
    acked = threading.Event()

    def batches() -> Iterator[pb.UpsertRequest]:
        yield pb.UpsertRequest(collection="timed", vectors=vecs(data[0][:200]),
                               ids=ids_bytes(np.arange(200)), mode=pb.WRITE_MODE_ADD)
        acked.wait(WAIT)
        time.sleep(2.5)  # past the call's deadline
        yield pb.UpsertRequest(vectors=vecs(data[0][200:300]), ids=ids_bytes(np.arange(200, 300)),
                               mode=pb.WRITE_MODE_ADD)

    responses = stubs.vectors.Ingest(batches(), timeout=2.0)
    seen = []
    with pytest.raises(grpc.RpcError) as info:
        for ack in responses:
            seen.append(ack.total_written)
            acked.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert seen == [200]
    time.sleep(0.5)  # the server notices the cancelled stream before it reads batch 2
    count = stubs.collections.GetCollection(pb.GetCollectionRequest(name="timed")).count
    assert count == 200  # the acknowledged batch, and not the late one
    stubs.collections.DeleteCollection(pb.DeleteCollectionRequest(name="timed"))


# ------------------------------------------------------------------- health and reflection
def test_health_and_reflection(stubs: Stubs) -> None:
    for service in ("", *SERVICES):
        reply = stubs.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(stubs.channel)
    services = set(db.get_services())
    assert services >= {*SERVICES, "grpc.health.v1.Health",
                        "grpc.reflection.v1alpha.ServerReflection"}
    # a generic client can resolve the methods and messages from the server alone
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(db)
    search = pool.FindServiceByName("anns.v1.Search")
    assert search.methods_by_name["Search"].input_type.full_name == "anns.v1.SearchRequest"
    ingest = pool.FindServiceByName("anns.v1.Vectors").methods_by_name["Ingest"]
    assert ingest.client_streaming and ingest.server_streaming


def test_metrics_endpoint(running: RunningServer, stubs: Stubs,
                          data: tuple[np.ndarray, np.ndarray]) -> None:
    def sample(name: str) -> float:
        return running.metrics.registry.get_sample_value(name) or 0.0

    before = {name: sample(name) for name in ("anns_search_postings_probed_count",
                                              "anns_search_postings_probed_sum")}
    resp = stubs.search.Search(pb.SearchRequest(collection="base", queries=vecs(data[1]), k=5,
                                                return_stats=True))
    # one sample per query, of that query's figure
    assert sample("anns_search_postings_probed_count") == (
        before["anns_search_postings_probed_count"] + len(data[1]))
    assert sample("anns_search_postings_probed_sum") == (
        before["anns_search_postings_probed_sum"] + resp.stats.postings_probed)
    status_of(lambda: stubs.collections.GetCollection(pb.GetCollectionRequest(name="nope")))
    assert running.metrics_port
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=WAIT).read().decode()
    assert 'anns_grpc_requests_total{rpc="Search.Search"}' in text
    assert 'anns_grpc_errors_total{code="NOT_FOUND",rpc="Collections.GetCollection"}' in text
    assert 'anns_grpc_request_seconds_bucket{le="0.005",rpc="Search.Search"}' in text
    assert "anns_search_postings_probed_count" in text and "anns_search_bytes_read_sum" in text
    probed = [line for line in text.splitlines()
              if line.startswith("anns_search_postings_probed_count")]
    assert float(probed[0].split()[-1]) >= 1


def test_an_ingest_the_client_cancels_is_counted_as_cancelled(
    running: RunningServer, stubs: Stubs, data: tuple[np.ndarray, np.ndarray]
) -> None:
    def sample(code: str) -> float:
        return running.metrics.registry.get_sample_value(
            "anns_grpc_errors_total", {"rpc": "Vectors.Ingest", "code": code}) or 0.0

    before = {code: sample(code) for code in ("CANCELLED", "INTERNAL")}

    def requests() -> Iterator[pb.UpsertRequest]:
        for i in range(3):
            yield pb.UpsertRequest(collection="base", vectors=vecs(data[1][:2]),
                                   ids=ids_bytes([70_000 + 2 * i, 70_001 + 2 * i]))
        time.sleep(5)  # the server waits for the next batch: the call is cancelled meanwhile

    call = stubs.vectors.Ingest(requests())
    for _ in range(3):
        next(call)  # the batches' acks
    call.cancel()
    deadline = time.monotonic() + WAIT
    while sample("CANCELLED") + sample("INTERNAL") == sum(before.values()) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert sample("CANCELLED") == before["CANCELLED"] + 1
    assert sample("INTERNAL") == before["INTERNAL"]
    stubs.vectors.Delete(pb.DeleteVectorsRequest(collection="base",
                                                 ids=ids_bytes(np.arange(70_000, 70_006))))


# ---------------------------------------------------------------------------- concurrency
def test_concurrent_searches_while_one_ingests(
    running: RunningServer, stubs: Stubs, data: tuple[np.ndarray, np.ndarray]
) -> None:
    base, queries = data
    stubs.collections.CreateCollection(pb.CreateCollectionRequest(
        name="busy", config=pb.CollectionConfig(dim=16, posting_size=16, max_posting_size=48)))
    stubs.vectors.Upsert(pb.UpsertRequest(collection="busy", vectors=vecs(base[:300]),
                                          ids=ids_bytes(np.arange(300)), mode=pb.WRITE_MODE_ADD))
    address = f"127.0.0.1:{running.port}"
    errors: list[BaseException] = []
    done = threading.Event()
    searches = [0]

    def searcher() -> None:
        with grpc.insecure_channel(address) as channel:
            search = rpc.SearchStub(channel)
            try:
                while not done.is_set():
                    resp = search.Search(pb.SearchRequest(collection="busy",
                                                          queries=vecs(queries), k=10),
                                         timeout=WAIT)
                    ids = np.frombuffer(resp.ids, "<i8").reshape(len(queries), 10)
                    # -1 pads where pruning found fewer than k; never an id not written
                    assert (ids >= -1).all() and (ids < len(base)).all() and (ids >= 0).any()
                    searches[0] += 1
            except BaseException as e:  # reported below
                errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    batches = [pb.UpsertRequest(collection="busy", mode=pb.WRITE_MODE_ADD,
                                vectors=vecs(base[start:start + 100]),
                                ids=ids_bytes(np.arange(start, start + 100)))
               for start in range(300, 1500, 100)]
    acked: list[np.ndarray] = []
    try:
        for ack in stubs.vectors.Ingest(iter(batches), timeout=WAIT):
            acked.append(np.frombuffer(ack.ids, "<i8"))
    finally:
        done.set()
        for t in threads:
            t.join(WAIT)
    assert not errors, errors
    assert searches[0] >= 4
    every = np.concatenate(acked)
    assert len(every) == 1200
    got = stubs.vectors.Get(pb.GetVectorsRequest(collection="busy", ids=ids_bytes(every)))
    np.testing.assert_allclose(np.frombuffer(got.vectors.data, "<f4").reshape(-1, 16),
                               base[300:1500], rtol=1e-5, atol=1e-5)
    assert stubs.collections.GetCollection(pb.GetCollectionRequest(name="busy")).count == 1500
    stubs.collections.DeleteCollection(pb.DeleteCollectionRequest(name="busy"))


# ---------------------------------------------------------------------------- auth and TLS
TOKEN = "s3cret-token-of-the-test-server"


def test_bearer_token_auth(tmp_path: Path) -> None:
    anns.Collection.create(tmp_path / "c", anns.IndexConfig(dim=4)).close()
    server = build_server(ServerConfig(root=tmp_path, port=0, token=TOKEN))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            s = Stubs(channel)
            wait_serving(s)  # health needs no token
            good = (("authorization", f"Bearer {TOKEN}"),)
            info = s.server.GetServerInfo(pb.GetServerInfoRequest(), metadata=good)
            assert info.auth_required
            assert s.collections.GetCollection(pb.GetCollectionRequest(name="c"),
                                               metadata=good).name == "c"
            details = set()
            for metadata in [(), (("authorization", "Bearer wrong"),),
                             (("authorization", TOKEN),), (("authorization", f"Basic {TOKEN}"),)]:
                for call in [
                    lambda m=metadata: s.collections.GetCollection(
                        pb.GetCollectionRequest(name="c"), metadata=m),
                    lambda m=metadata: s.collections.GetCollection(
                        pb.GetCollectionRequest(name="no-such"), metadata=m),
                    lambda m=metadata: list(s.vectors.Ingest(iter([pb.UpsertRequest()]),
                                                             metadata=m)),
                ]:
                    err = status_of(call)
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert trailer(err) is None
                    details.add(err.details())
            assert details == {"missing or invalid bearer token"}  # learns nothing else
    finally:
        server.stop(grace=5)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    (tmp_path / "root").mkdir()
    server = build_server(ServerConfig(root=tmp_path / "root", port=0, tls_cert=cert,
                                       tls_key=key, token=TOKEN))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            info = rpc.ServerStub(channel).GetServerInfo(
                pb.GetServerInfoRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=WAIT)
            assert info.version == anns.__version__
        # the plaintext protocol is refused
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            err = status_of(lambda: rpc.ServerStub(channel).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=10))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        with anns.Client(f"localhost:{server.port}", root_certificates=cert, token=TOKEN) as c:
            assert c.server_info()["auth_required"]
    finally:
        server.stop(grace=5)
