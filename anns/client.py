"""``anns.Client``: collections on an anns server, in the shape of the embedded library.

::

    with anns.Client("localhost:50051") as client:
        coll = client.create_collection("docs", {"dim": 64, "metric": "cosine"})
        coll.add(vectors)                          # ids assigned, returned
        result = coll.search(queries, k=10)        # result.ids, result.distances
        coll.ingest("big.npy", progress=True)      # streamed, acknowledged batch by batch

Numpy in, numpy out; errors are the library's own classes (``anns.NotFoundError``, ...), as
the server names them. Failures of the transport (UNAVAILABLE after retries, DEADLINE_EXCEEDED,
UNAUTHENTICATED) are raised as ``grpc.RpcError``.

Batches larger than the server's ``max_message_bytes`` (or ``max_batch``) are split by bytes
into several calls: a search's results are concatenated; a large ``add``/``upsert`` becomes a
stream of atomic batches (each durable once acknowledged). Only calls that are safe to repeat
(reads, searches, upserts with ids, deletes) are retried, on UNAVAILABLE, with backoff.

This module imports grpc (and the generated stubs) only when a Client is created: ``import
anns`` needs no gRPC.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from anns import errors
from anns.config import IndexConfig, SearchParams, validated
from anns.search import SearchResult, SearchStats
from anns.vectors import as_ids, as_vectors, check_k

if TYPE_CHECKING:
    import grpc

#: Bytes of every message kept for fields other than the arrays (names, knobs, framing).
_HEADROOM = 8192

#: Status code name -> the library's class, when the server did not name a class of its own.
_BY_STATUS: dict[str, type[errors.AnnsError]] = {
    "INVALID_ARGUMENT": errors.InvalidArgumentError,
    "NOT_FOUND": errors.NotFoundError,
    "ALREADY_EXISTS": errors.AlreadyExistsError,
    "FAILED_PRECONDITION": errors.FailedPreconditionError,
    "DATA_LOSS": errors.CorruptCollectionError,
    "RESOURCE_EXHAUSTED": errors.LimitExceededError,
}


@dataclass(frozen=True)
class RemoteSearchResult(SearchResult):
    """A :class:`anns.SearchResult`, plus ``vectors`` float32 [q, k, dim] when asked for
    (``return_vectors=True``; zeros where ids are -1)."""

    vectors: np.ndarray | None = None


class Client:
    """A connection to an anns server (``anns serve``).

    ``address``: ``host:port``. ``token``: the server's bearer token, if it has one.
    ``tls``: speak TLS; ``root_certificates``: PEM bytes or a file path of the CA that signed
    the server's certificate (default: the system's roots). ``timeout``: seconds per call
    (streams: see :meth:`RemoteCollection.ingest`). ``retries``: attempts after the first for
    calls that are safe to repeat, on UNAVAILABLE (server starting, collection opening).
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
        retries: int = 4,
    ) -> None:
        import grpc  # here, not at import: the embedded library needs no gRPC

        from anns_proto.anns.v1 import anns_pb2, anns_pb2_grpc

        self._grpc, self.pb = grpc, anns_pb2
        self.address, self.timeout, self.retries = address, timeout, retries
        # the server bounds its responses by its advertised limit; the client accepts them
        options = [("grpc.max_receive_message_length", -1),
                   ("grpc.max_send_message_length", -1)]
        if tls or root_certificates is not None:
            roots = root_certificates
            if isinstance(roots, (str, os.PathLike)):
                with open(roots, "rb") as f:
                    roots = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(address, credentials, options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.collections = anns_pb2_grpc.CollectionsStub(self._channel)
        self.vectors = anns_pb2_grpc.VectorsStub(self._channel)
        self.searches = anns_pb2_grpc.SearchStub(self._channel)
        self.server = anns_pb2_grpc.ServerStub(self._channel)
        self._info: Any = None

    # ----------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------- server
    def server_info(self) -> dict[str, Any]:
        """Version and limits: ``version``, ``max_message_bytes``, ``max_k``, ``max_batch``,
        ``auth_required``."""
        info = self._limits()
        return {"version": info.version, "max_message_bytes": info.max_message_bytes,
                "max_k": info.max_k, "max_batch": info.max_batch,
                "auth_required": info.auth_required}

    def _limits(self) -> Any:
        if self._info is None:
            self._info = self.call(self.server.GetServerInfo, self.pb.GetServerInfoRequest(),
                                   idempotent=True)
        return self._info

    def rows_per_call(self, request_row: int, response_row: int = 0, what: str = "vector") -> int:
        """Most rows of ``request_row`` bytes (answered with ``response_row`` bytes each) that
        fit one message under the server's limits."""
        info = self._limits()
        row = max(request_row, response_row, 1)
        rows = min(int(info.max_batch), (int(info.max_message_bytes) - _HEADROOM) // row)
        if rows < 1:
            raise errors.LimitExceededError(
                f"one {what} needs {row} bytes in a message, over the server's limit of "
                f"{info.max_message_bytes} bytes (max_message_bytes)"
            )
        return rows

    # --------------------------------------------------------------------- collections
    def create_collection(self, name: str, config: IndexConfig | dict[str, Any]) -> RemoteCollection:
        """Create an empty collection on the server (AlreadyExistsError if the name is taken);
        ``config``: an IndexConfig or a dict of its fields (``dim`` required)."""
        from server.convert import to_proto_config

        if not isinstance(config, IndexConfig):
            config = validated(IndexConfig, **config)
        msg = self.call(self.collections.CreateCollection, self.pb.CreateCollectionRequest(
            name=name, config=to_proto_config(config)))
        return RemoteCollection(self, msg)

    def collection(self, name: str) -> RemoteCollection:
        """A collection of the server (NotFoundError if there is none of that name)."""
        msg = self.call(self.collections.GetCollection,
                        self.pb.GetCollectionRequest(name=name), idempotent=True)
        return RemoteCollection(self, msg)

    def list_collections(self) -> list[dict[str, Any]]:
        """Every collection: its info (as :meth:`anns.Collection.info`, with ``name`` instead of
        ``path``), or ``name``, ``state`` ("opening", "failed") and ``error``."""
        resp = self.call(self.collections.ListCollections, self.pb.ListCollectionsRequest(),
                         idempotent=True)
        out = []
        for msg in resp.collections:
            if msg.state == self.pb.COLLECTION_STATE_READY:
                out.append({"state": "ready", **json.loads(msg.info_json)})
            else:
                state = self.pb.CollectionState.Name(msg.state).removeprefix("COLLECTION_STATE_")
                out.append({"name": msg.name, "state": state.lower(), "error": msg.error})
        return out

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its data (after the calls using it end)."""
        self.call(self.collections.DeleteCollection, self.pb.DeleteCollectionRequest(name=name))

    # ---------------------------------------------------------------------------- calls
    def call(self, method: Any, request: Any, *, idempotent: bool = False,
             timeout: float | None = None) -> Any:
        """One unary call, retried on UNAVAILABLE if ``idempotent``; errors translated."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        backoff = 0.1
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 0.001),
                              metadata=self._metadata)
            except self._grpc.RpcError as e:
                pause = backoff * random.uniform(0.5, 1.0)
                retry = (idempotent and attempt < self.retries
                         and e.code() == self._grpc.StatusCode.UNAVAILABLE
                         and time.monotonic() + pause < deadline)
                if not retry:
                    raise self.translate(e) from None
                time.sleep(pause)
                backoff = min(backoff * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, method: Any, requests: Iterator[Any], timeout: float | None) -> Iterator[Any]:
        """A streaming call's responses; errors translated."""
        try:
            yield from method(requests, timeout=timeout, metadata=self._metadata)
        except self._grpc.RpcError as e:
            raise self.translate(e) from None

    def translate(self, error: grpc.RpcError) -> Exception:
        """The library's exception for a failed call (its own class, named by the server), or
        the RpcError itself for failures of the transport."""
        code = error.code()
        details = error.details() or code.name
        named = dict(error.trailing_metadata() or ()).get("anns-error")
        cls = getattr(errors, named, None) if isinstance(named, str) else None
        if not (isinstance(cls, type) and issubclass(cls, errors.AnnsError)):
            cls = _BY_STATUS.get(code.name)
        return cls(details) if cls is not None else error


class RemoteCollection:
    """A collection on a server: the methods of :class:`anns.Collection`, over gRPC."""

    def __init__(self, client: Client, msg: Any) -> None:
        self.client = client
        self.name: str = msg.name
        self.config = IndexConfig.model_validate(json.loads(msg.info_json)["config"])

    @property
    def dim(self) -> int:
        return self.config.dim

    def __repr__(self) -> str:
        return f"RemoteCollection({self.name!r} on {self.client.address}, dim {self.dim})"

    # --------------------------------------------------------------------------- figures
    def info(self) -> dict[str, Any]:
        """Configuration and figures (as :meth:`anns.Collection.info`, ``name`` for ``path``)."""
        c = self.client
        msg = c.call(c.collections.GetCollection, c.pb.GetCollectionRequest(name=self.name),
                     idempotent=True)
        return json.loads(msg.info_json)  # type: ignore[no-any-return]

    def count(self) -> int:
        """Number of live vectors."""
        return int(self.info()["count"])

    def __len__(self) -> int:
        return self.count()

    # ----------------------------------------------------------------------------- reads
    def search(
        self,
        queries: Any,
        k: int = 10,
        params: SearchParams | None = None,
        *,
        return_stats: bool = False,
        return_vectors: bool = False,
        model: str | None = None,
        **knobs: Any,
    ) -> RemoteSearchResult:
        """As :meth:`anns.Collection.search`; ``return_vectors`` also returns each result's
        stored vector. Split into calls that fit the server's limits; results concatenated, and
        ``stats`` summed (``stats.per_query`` in query order, as the library's)."""
        from server.convert import PER_QUERY_STATS_BYTES, from_proto_stats

        c, pb = self.client, self.client.pb
        k = check_k(k)
        q = as_vectors(queries, _model_dim(queries, self.dim), what="query")
        wire, as_given = _wire_knobs(params, knobs)
        request_params = pb.SearchParams(**wire)
        # ids and distances of k results, their vectors and the query's figures if asked for
        per_row = (k * (12 + (4 * self.dim if return_vectors else 0))
                   + (PER_QUERY_STATS_BYTES if return_stats else 0))
        rows = c.rows_per_call(4 * self.dim, per_row, "query")
        ids, distances, vectors = [], [], []
        stats = SearchStats() if return_stats else None
        for start in range(0, max(len(q), 1), rows):
            part = q[start:start + rows]
            resp = c.call(c.searches.Search, pb.SearchRequest(
                collection=self.name, queries=pb.VectorBatch(data=part.tobytes(), dim=q.shape[1]),
                k=k, params=request_params, params_as_given=as_given,
                return_vectors=return_vectors, return_stats=return_stats, model=model or ""),
                idempotent=True)
            ids.append(np.frombuffer(resp.ids, dtype="<i8").reshape(len(part), k))
            distances.append(np.frombuffer(resp.distances, dtype="<f4").reshape(len(part), k))
            if return_vectors:
                vectors.append(np.frombuffer(resp.vectors.data, dtype="<f4")
                               .reshape(len(part), k, self.dim))
            if stats is not None:  # calls cover consecutive queries: figures concatenate
                stats = stats + from_proto_stats(resp.stats)
        return RemoteSearchResult(
            _joined(ids, np.int64), _joined(distances, np.float32), stats,
            _joined(vectors, np.float32) if return_vectors else None,
        )

    def get(self, ids: Any) -> np.ndarray:
        """Stored vectors of ``ids``: float32 [n, dim]; NotFoundError names missing ids."""
        c, pb = self.client, self.client.pb
        ids = as_ids(ids)
        rows = c.rows_per_call(8, 4 * self.dim + 8, "id")
        out = [np.empty((0, self.dim), np.float32)]
        for start in range(0, len(ids), rows):
            resp = c.call(c.vectors.Get, pb.GetVectorsRequest(
                collection=self.name, ids=ids[start:start + rows].astype("<i8").tobytes()),
                idempotent=True)
            out.append(np.frombuffer(resp.vectors.data, dtype="<f4").reshape(-1, self.dim))
        return np.concatenate(out).astype(np.float32, copy=False)

    # ---------------------------------------------------------------------------- writes
    def add(self, vectors: Any, ids: Any = None, *, model: str | None = None) -> np.ndarray:
        """As :meth:`anns.Collection.add`. One atomic call when the batch fits one message,
        else a stream of atomic batches (see :meth:`ingest`). Returns the ids (int64 [n])."""
        return self._write(vectors, ids, upsert=False, model=model)

    def upsert(self, vectors: Any, ids: Any, *, model: str | None = None) -> np.ndarray:
        """As :meth:`anns.Collection.upsert` (batching as :meth:`add`). Returns the ids."""
        return self._write(vectors, ids, upsert=True, model=model)

    def delete(self, ids: Any) -> int:
        """Delete ids (unknown ones are ignored); returns how many stored vectors were deleted."""
        c, pb = self.client, self.client.pb
        ids = as_ids(ids)
        rows = c.rows_per_call(8, 0, "id")
        deleted = 0
        for start in range(0, len(ids), rows):
            resp = c.call(c.vectors.Delete, pb.DeleteVectorsRequest(
                collection=self.name, ids=ids[start:start + rows].astype("<i8").tobytes()),
                idempotent=True)
            deleted += int(resp.deleted)
        return deleted

    def _write(self, vectors: Any, ids: Any, *, upsert: bool, model: str | None) -> np.ndarray:
        c, pb = self.client, self.client.pb
        x = as_vectors(vectors, _model_dim(vectors, self.dim))
        id_array = None if ids is None else as_ids(ids, len(x))
        if upsert and id_array is None:
            raise errors.InvalidArgumentError("upsert needs ids")
        if len(x) > c.rows_per_call(4 * x.shape[1] + 8, 8):
            return self.ingest(x, id_array, upsert=upsert, model=model)
        ack = c.call(c.vectors.Upsert, pb.UpsertRequest(
            collection=self.name, vectors=pb.VectorBatch(data=x.tobytes(), dim=x.shape[1]),
            model=model or "",
            ids=b"" if id_array is None else id_array.astype("<i8").tobytes(),
            mode=pb.WRITE_MODE_UPSERT if upsert else pb.WRITE_MODE_ADD), idempotent=upsert)
        return np.frombuffer(ack.ids, dtype="<i8").astype(np.int64)

    def ingest(
        self,
        vectors: Any,
        ids: Any = None,
        *,
        upsert: bool = False,
        batch_rows: int | None = None,
        progress: bool = False,
        timeout: float | None = None,
        model: str | None = None,
    ) -> np.ndarray:
        """Stream vectors to the collection in batches, each written atomically and
        acknowledged once durable; returns the ids written (int64 [n]).

        ``vectors``: an array [n, dim] or a .npy/.fvecs path (memory-mapped, so files larger
        than RAM stream). ``ids``: int64 [n] (array or .npy path) or None (``add``: assigned by
        the server). ``batch_rows``: rows per batch (default: as many as fit a message, at
        most 8 MiB). ``progress``: a progress bar of acknowledged vectors on stderr.
        ``timeout``: seconds for the whole stream (default none). On an error, the batches
        acknowledged before it stay written; the error message says how many. ``model``:
        the model version that embedded the vectors (default: the current one); a backfill
        over gRPC is an upsert stream naming it.
        """
        from tqdm import tqdm

        from anns.formats import open_ids, open_matrix

        c, pb = self.client, self.client.pb
        x = open_matrix(vectors) if isinstance(vectors, (str, os.PathLike)) else vectors
        id_source = open_ids(ids) if isinstance(ids, (str, os.PathLike)) else ids
        n = len(x)
        if id_source is not None and len(id_source) != n:
            raise errors.InvalidArgumentError(f"got {len(id_source)} ids for {n} vectors")
        if upsert and id_source is None:
            raise errors.InvalidArgumentError("upsert needs ids")
        dim = _model_dim(x, self.dim)
        row_bytes = 4 * dim + 8
        rows = c.rows_per_call(row_bytes, 8)
        rows = min(rows, batch_rows or max(1, (8 << 20) // row_bytes))
        mode = pb.WRITE_MODE_UPSERT if upsert else pb.WRITE_MODE_ADD

        refused: list[errors.AnnsError] = []

        def requests() -> Iterator[Any]:
            for start in range(0, n, rows):
                numbers = np.arange(start, min(start + rows, n))
                try:
                    part = as_vectors(np.asarray(x[start:start + rows]), dim, rows=numbers)
                    part_ids = None if id_source is None else as_ids(
                        np.asarray(id_source[start:start + rows]), len(part))
                except errors.AnnsError as e:
                    # end the stream cleanly: what was sent is written; the error is raised
                    # below with the count (raised here, gRPC would cancel the call as UNKNOWN)
                    refused.append(e)
                    return
                yield pb.UpsertRequest(
                    collection=self.name, mode=mode, model=model or "",
                    vectors=pb.VectorBatch(data=part.tobytes(), dim=dim),
                    ids=b"" if part_ids is None else part_ids.astype("<i8").tobytes())

        written: list[np.ndarray] = [np.empty(0, np.int64)]
        total = 0
        bar = tqdm(total=n, unit="vec", disable=not progress, file=sys.stderr,
                   desc=f"ingest {self.name}")
        try:
            for ack in c.stream(c.vectors.Ingest, requests(), timeout):
                written.append(np.frombuffer(ack.ids, dtype="<i8").astype(np.int64))
                total = ack.total_written
                bar.update(ack.written)
            if refused:
                raise refused[0]
        except Exception as e:
            if isinstance(e, errors.AnnsError):
                raise type(e)(f"{e} ({total} of {n} vectors were written and acknowledged "
                              f"before the error)") from None
            raise
        finally:
            bar.close()
        return np.concatenate(written)


def _model_dim(vectors: Any, base_dim: int) -> int:
    """The dim to validate against locally: the input's own. The server checks it against the
    version's that embedded it (named, or the current one, which may have changed since this
    handle was made), with the library's error."""
    shape = np.shape(vectors)
    return int(shape[-1]) if len(shape) and shape[-1] else base_dim


def _wire_knobs(
    params: SearchParams | None, knobs: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Knobs for the wire with the library's semantics, and whether they go as given: a
    SearchParams given is used whole (not over the collection's default profile) unless it
    names a target_recall."""
    fields: dict[str, Any] = {}
    as_given = params is not None and params.target_recall is None
    if params is not None:
        if params.target_recall is not None:
            fields = params.model_dump(exclude_unset=True)
        else:
            fields = params.model_dump(exclude_none=True)
    fields.update(knobs)
    checked = validated(SearchParams, **fields)  # bad knobs fail here, as in the library
    as_given = as_given and checked.target_recall is None
    wire = {name: value for name, value in fields.items() if value is not None}
    return wire, as_given


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    if len(parts) == 1:
        return parts[0].astype(dtype, copy=True)  # frombuffer views are read-only
    return np.concatenate(parts).astype(dtype, copy=False)
