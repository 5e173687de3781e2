"""The four services of anns.v1: convert the request, call the library, convert the result.

No try/except here: errors are AnnsErrors and the serving interceptor maps them to status
codes. Limits the server advertises (GetServerInfo) are checked before the library is called.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from grpc import ServicerContext as Context
import numpy as np

import anns
from anns.errors import InvalidArgumentError, NotFoundError
from anns.index import Collection
from anns_proto.anns.v1 import anns_pb2 as pb
from anns_proto.anns.v1 import anns_pb2_grpc as rpc
from server.config import ServerConfig
from server.convert import (
    PER_QUERY_STATS_BYTES,
    from_proto_config,
    from_proto_ids,
    from_proto_params,
    from_proto_vectors,
    to_proto_collection,
    to_proto_ids,
    to_proto_stats,
    to_proto_vectors,
)
from server.errors import DeadlineError, RequestLimitError
from server.metrics import Metrics
from server.registry import FAILED, OPENING, Registry


_STATES = {OPENING: pb.COLLECTION_STATE_OPENING, FAILED: pb.COLLECTION_STATE_FAILED}


class Limits:
    """The limits of :class:`ServerConfig` that requests are checked against."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config

    def rows(self, n: int, what: str) -> None:
        if n > self.config.max_batch:
            raise RequestLimitError(
                f"{n} {what} in one request, over this server's limit of "
                f"{self.config.max_batch} (max_batch, see GetServerInfo)"
            )

    def get(self, n: int, dim: int) -> None:
        """A Get of ``n`` ids: its response holds them (8 B) and their vectors (4 B a dim)."""
        self.rows(n, "ids")
        size = n * (8 + 4 * dim) + 4096
        if size > self.config.max_message_bytes:
            raise RequestLimitError(
                f"the response to a Get of {n} ids of {dim} dims would be about {size} bytes, "
                f"over this server's limit of {self.config.max_message_bytes} bytes "
                f"(max_message_bytes, see GetServerInfo); ask for fewer ids per call"
            )

    def search(self, q: int, k: int, dim: int, with_vectors: bool, with_stats: bool) -> None:
        self.rows(q, "queries")
        if k > self.config.max_k:
            raise RequestLimitError(f"k {k} is over this server's limit of {self.config.max_k} "
                                    f"(max_k, see GetServerInfo)")
        # ids (8 B) and distances (4 B) per result, the vectors if asked, the per-query
        # figures if asked, framing slack
        size = (q * k * (12 + (4 * dim if with_vectors else 0))
                + (q * PER_QUERY_STATS_BYTES if with_stats else 0) + 4096)
        if size > self.config.max_message_bytes:
            raise RequestLimitError(
                f"the response to {q} queries with k={k}"
                f"{' and their vectors' if with_vectors else ''}"
                f"{' and per-query stats' if with_stats else ''} would be about {size} bytes, "
                f"over this server's limit of {self.config.max_message_bytes} bytes "
                f"(max_message_bytes, see GetServerInfo); send fewer queries per call"
            )


def _ids_or_none(data: bytes) -> np.ndarray | None:
    return from_proto_ids(data) if data else None


class CollectionsService(rpc.CollectionsServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def CreateCollection(self, request: pb.CreateCollectionRequest, context: Context) -> Any:
        config = from_proto_config(request.config)
        self.registry.create(request.name, config)
        with self.registry.use(request.name) as coll:
            return to_proto_collection(request.name, coll)

    def GetCollection(self, request: pb.GetCollectionRequest, context: Context) -> Any:
        with self.registry.use(request.name) as coll:
            return to_proto_collection(request.name, coll)

    def ListCollections(self, request: pb.ListCollectionsRequest, context: Context) -> Any:
        out = []
        for entry in self.registry.entries():
            if entry.state in _STATES:
                out.append(pb.Collection(name=entry.name, state=_STATES[entry.state],
                                         error=str(entry.error or "")))
                continue
            try:
                with self.registry.use(entry.name) as coll:
                    out.append(to_proto_collection(entry.name, coll))
            except NotFoundError:  # deleted since the listing began
                continue
        return pb.ListCollectionsResponse(collections=out)

    def DeleteCollection(self, request: pb.DeleteCollectionRequest, context: Context) -> Any:
        self.registry.delete(request.name)
        return pb.DeleteCollectionResponse()


class VectorsService(rpc.VectorsServicer):
    def __init__(self, registry: Registry, limits: Limits, metrics: Metrics) -> None:
        self.registry, self.limits, self.metrics = registry, limits, metrics

    def _write(self, coll: Collection, name: str, request: pb.UpsertRequest) -> np.ndarray:
        x = from_proto_vectors(request.vectors)
        model = request.model or None
        self.limits.rows(len(x), "vectors")
        ids = _ids_or_none(request.ids)
        if request.mode not in pb.WriteMode.values():  # UNSPECIFIED is an upsert
            raise InvalidArgumentError(f"unknown write mode {request.mode}: WRITE_MODE_ADD or "
                                       f"WRITE_MODE_UPSERT")
        if request.mode == pb.WRITE_MODE_ADD:
            written = coll.add(x, ids, model=model)
        elif ids is None:
            raise InvalidArgumentError("an upsert needs ids (WRITE_MODE_ADD may omit them)")
        else:
            written = coll.upsert(x, ids, model=model)
        self.metrics.written.inc(len(written))
        return written

    def Upsert(self, request: pb.UpsertRequest, context: Context) -> Any:
        with self.registry.use(request.collection) as coll:
            ids = self._write(coll, request.collection, request)
        return pb.WriteAck(batch=0, written=len(ids), total_written=len(ids),
                           ids=to_proto_ids(ids))

    def Ingest(self, requests: Iterator[pb.UpsertRequest], context: Context) -> Iterator[Any]:
        first = next(requests, None)
        if first is None:
            return
        if not first.collection:
            raise InvalidArgumentError("the first message of an Ingest stream must name the "
                                       "collection")
        name, total = first.collection, 0
        with self.registry.use(name) as coll:
            for batch, request in enumerate(itertools.chain([first], requests)):
                if request.collection and request.collection != name:
                    raise InvalidArgumentError(
                        f"message {batch} of the stream names collection "
                        f"{request.collection!r}; the stream writes to {name!r}"
                    )
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise DeadlineError(f"the deadline passed before batch {batch} was written "
                                        f"({total} vectors were acknowledged)")
                ids = self._write(coll, name, request)
                total += len(ids)
                yield pb.WriteAck(batch=batch, written=len(ids), total_written=total,
                                  ids=to_proto_ids(ids))

    def Get(self, request: pb.GetVectorsRequest, context: Context) -> Any:
        ids = from_proto_ids(request.ids)
        self.limits.rows(len(ids), "ids")
        with self.registry.use(request.collection) as coll:
            self.limits.get(len(ids), coll.dim)
            vectors = coll.get(ids)
            dim = coll.dim
        return pb.GetVectorsResponse(ids=request.ids, vectors=to_proto_vectors(
            vectors.reshape(len(ids), dim)))

    def Delete(self, request: pb.DeleteVectorsRequest, context: Context) -> Any:
        ids = from_proto_ids(request.ids)
        self.limits.rows(len(ids), "ids")
        with self.registry.use(request.collection) as coll:
            return pb.DeleteVectorsResponse(deleted=coll.delete(ids))


class SearchService(rpc.SearchServicer):
    def __init__(self, registry: Registry, limits: Limits, metrics: Metrics) -> None:
        self.registry, self.limits, self.metrics = registry, limits, metrics

    def Search(self, request: pb.SearchRequest, context: Context) -> Any:
        queries = from_proto_vectors(request.queries, "queries")
        knobs = from_proto_params(request.params, request.params_as_given)
        with self.registry.use(request.collection) as coll:
            self.limits.search(len(queries), request.k, queries.shape[1],
                               request.return_vectors, request.return_stats)
            given = knobs if isinstance(knobs, anns.SearchParams) else None
            result = coll.search(queries, request.k, given, return_stats=True,
                                 model=request.model or None, **(knobs if given is None else {}))
            vectors = _result_vectors(coll, result.ids) if request.return_vectors else None
        stats = result.stats
        if stats is not None:
            self.metrics.observe_search(stats)
        return pb.SearchResponse(
            num_queries=len(queries), k=request.k,
            ids=to_proto_ids(result.ids), distances=result.distances.astype("<f4").tobytes(),
            vectors=to_proto_vectors(vectors) if vectors is not None else None,
            stats=to_proto_stats(stats) if request.return_stats and stats else None,
        )


def _result_vectors(coll: Collection, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of search results: float32 [q * k, dim], zeros where ids are -1 (or an
    id was deleted between the search and this read)."""
    flat = ids.reshape(-1)
    out = np.zeros((len(flat), coll.dim), dtype=np.float32)
    unique, inverse = np.unique(flat, return_inverse=True)
    valid = unique >= 0
    rows = np.zeros((len(unique), coll.dim), dtype=np.float32)
    for _ in range(3):  # a delete may land between the two reads: read what is left again
        present = np.zeros(len(unique), dtype=bool)
        present[valid] = coll.contains(unique[valid])
        try:
            if present.any():
                rows[present] = coll.get(unique[present])
            break
        except NotFoundError:
            continue
    else:  # deleted faster than read three times over: the ids stand, their vectors zero
        rows[:] = 0
    out[:] = rows[inverse.reshape(-1)]
    return out


class ServerService(rpc.ServerServicer):
    def __init__(self, config: ServerConfig) -> None:
        self.info = pb.ServerInfo(
            version=anns.__version__, max_message_bytes=config.max_message_bytes,
            max_k=config.max_k, max_batch=config.max_batch,
            auth_required=config.token is not None,
        )

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: Context) -> Any:
        return self.info

