"""Wire <-> library: ``from_proto_*`` / ``to_proto_*`` pairs, numpy without copies.

Arrays travel packed little-endian (float32 vectors and distances, int64 ids); decoding is
``np.frombuffer``. Sizes are checked here, so a malformed message is an INVALID_ARGUMENT that
says which field is wrong.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from anns.config import IndexConfig, SearchParams, validated
from anns.errors import InvalidArgumentError
from anns.index import Collection
from anns.search import QueryStats, SearchStats
from anns_proto.anns.v1 import anns_pb2 as pb

#: Library value <-> proto enum, per enum-valued config field.
_ENUMS: dict[str, tuple[str, Any]] = {
    "metric": ("METRIC_", pb.Metric),
    "codec": ("CODEC_", pb.Codec),
    "centroid_index": ("CENTROID_INDEX_", pb.CentroidIndex),
    "vector_dtype": ("VECTOR_DTYPE_", pb.VectorDType),
}


# --------------------------------------------------------------------------------- arrays
def from_proto_vectors(batch: pb.VectorBatch, what: str = "vectors") -> np.ndarray:
    """float32 [rows, dim] view of a VectorBatch (read-only, no copy)."""
    if batch.dim == 0:
        raise InvalidArgumentError(f"{what}.dim must be positive, got 0")
    row = 4 * batch.dim
    if len(batch.data) % row:
        raise InvalidArgumentError(
            f"{what}.data holds {len(batch.data)} bytes, not a whole number of float32 rows of "
            f"dim {batch.dim} ({row} bytes each)"
        )
    return np.frombuffer(batch.data, dtype="<f4").reshape(-1, batch.dim)


def to_proto_vectors(x: np.ndarray) -> pb.VectorBatch:
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.VectorBatch(data=x.tobytes(), dim=x.shape[-1] if x.ndim else 0)


def from_proto_ids(data: bytes, what: str = "ids") -> np.ndarray:
    """int64 [n] view of packed little-endian ids (validated by the library after)."""
    if len(data) % 8:
        raise InvalidArgumentError(f"{what} holds {len(data)} bytes, not a whole number of int64")
    return np.frombuffer(data, dtype="<i8")


def to_proto_ids(ids: np.ndarray) -> bytes:
    data: bytes = np.ascontiguousarray(ids, dtype="<i8").tobytes()
    return data


# --------------------------------------------------------------------------------- config
def from_proto_config(msg: pb.CollectionConfig) -> IndexConfig:
    fields: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        name = fd.name
        if name in _ENUMS:
            prefix, enum = _ENUMS[name]
            value = getattr(msg, name)
            if value not in enum.values():
                raise InvalidArgumentError(
                    f"{name} {value} is not a value of {enum.DESCRIPTOR.name}")
            if value:  # UNSPECIFIED: the library's default
                fields[name] = enum.Name(value).removeprefix(prefix).lower()
        elif fd.has_presence:
            if msg.HasField(name):
                fields[name] = getattr(msg, name)
        else:
            fields[name] = getattr(msg, name)
    return validated(IndexConfig, **fields)


def to_proto_config(config: IndexConfig) -> pb.CollectionConfig:
    fields: dict[str, Any] = {}
    for name, value in config.model_dump().items():
        if value is None:
            continue
        if name in _ENUMS:
            prefix, enum = _ENUMS[name]
            value = enum.Value(prefix + value.upper())
        fields[name] = value
    return pb.CollectionConfig(**fields)


def from_proto_params(
    msg: pb.SearchParams, as_given: bool = False
) -> SearchParams | dict[str, Any]:
    """The knobs a request sets (checked): a SearchParams to search with as it is
    (``as_given``), or keyword arguments of Collection.search over the default profile."""
    knobs = {fd.name: getattr(msg, fd.name) for fd in msg.DESCRIPTOR.fields
             if msg.HasField(fd.name)}
    params = validated(SearchParams, **knobs)
    if as_given:
        if "target_recall" in knobs:
            raise InvalidArgumentError("as_given takes the knobs set as they are; "
                                       "target_recall takes the rest from a profile: not both")
        return params
    return knobs


#: Wire dtype of each per-query figure: counts bounded by a collection's postings or by a
#: query's rerank depth fit 32 bits; candidates and bytes grow with the collection.
_PER_QUERY_DTYPES = {"postings_probed": "<u4", "candidates_scored": "<u8", "bytes_read": "<u8",
                     "reranked": "<u4"}
#: Bytes the per-query figures add to a search response, per query.
PER_QUERY_STATS_BYTES = sum(np.dtype(dtype).itemsize for dtype in _PER_QUERY_DTYPES.values())


def to_proto_stats(stats: SearchStats) -> pb.SearchStats:
    per_query = stats.per_query
    return pb.SearchStats(
        queries=stats.queries, postings_probed=stats.postings_probed,
        postings_pruned=stats.postings_pruned, postings_fetched=stats.postings_fetched,
        bytes_read=stats.bytes_read, candidates_scored=stats.candidates_scored,
        reranked=stats.reranked, seconds=stats.seconds,
        per_query=pb.QueryStats(**{
            name: np.ascontiguousarray(getattr(per_query, name), dtype=dtype).tobytes()
            for name, dtype in _PER_QUERY_DTYPES.items()}),
    )


def from_proto_stats(msg: pb.SearchStats) -> SearchStats:
    per_query: dict[str, np.ndarray] = {}
    for name, dtype in _PER_QUERY_DTYPES.items():
        data = getattr(msg.per_query, name)
        size = np.dtype(dtype).itemsize
        if len(data) != size * msg.queries:
            raise InvalidArgumentError(
                f"stats.per_query.{name} holds {len(data)} bytes, not {msg.queries} "
                f"{np.dtype(dtype).name} values (one per query)"
            )
        per_query[name] = np.frombuffer(data, dtype=dtype).astype(np.int64)
    return SearchStats(
        queries=msg.queries, postings_probed=msg.postings_probed,
        postings_pruned=msg.postings_pruned, postings_fetched=msg.postings_fetched,
        bytes_read=msg.bytes_read, candidates_scored=msg.candidates_scored,
        reranked=msg.reranked, seconds=dict(msg.seconds), per_query=QueryStats(**per_query),
    )


# ----------------------------------------------------------------------------- collection
def to_proto_collection(name: str, coll: Collection) -> pb.Collection:
    info = coll.info()
    info.pop("path", None)  # a path of the server's machine is no business of its clients
    return pb.Collection(
        name=name,
        state=pb.COLLECTION_STATE_READY,
        config=to_proto_config(coll.config),
        count=info["count"],
        postings=info["postings"],
        disk_bytes=info["disk_bytes"],
        tuned_recall_targets=sorted(coll.profiles()),
        info_json=json.dumps({"name": name, **info}),
    )
