from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_L2: _ClassVar[Metric]
    METRIC_IP: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_SQ8: _ClassVar[Codec]
    CODEC_FLAT: _ClassVar[Codec]
    CODEC_OPQ: _ClassVar[Codec]

class VectorDType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_DTYPE_UNSPECIFIED: _ClassVar[VectorDType]
    VECTOR_DTYPE_FLOAT32: _ClassVar[VectorDType]
    VECTOR_DTYPE_UINT8: _ClassVar[VectorDType]
    VECTOR_DTYPE_INT8: _ClassVar[VectorDType]

class CentroidIndex(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CENTROID_INDEX_UNSPECIFIED: _ClassVar[CentroidIndex]
    CENTROID_INDEX_AUTO: _ClassVar[CentroidIndex]
    CENTROID_INDEX_FLAT: _ClassVar[CentroidIndex]
    CENTROID_INDEX_HNSW: _ClassVar[CentroidIndex]

class CollectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLLECTION_STATE_UNSPECIFIED: _ClassVar[CollectionState]
    COLLECTION_STATE_OPENING: _ClassVar[CollectionState]
    COLLECTION_STATE_READY: _ClassVar[CollectionState]
    COLLECTION_STATE_FAILED: _ClassVar[CollectionState]

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_MODE_UNSPECIFIED: _ClassVar[WriteMode]
    WRITE_MODE_UPSERT: _ClassVar[WriteMode]
    WRITE_MODE_ADD: _ClassVar[WriteMode]
METRIC_UNSPECIFIED: Metric
METRIC_L2: Metric
METRIC_IP: Metric
METRIC_COSINE: Metric
CODEC_UNSPECIFIED: Codec
CODEC_SQ8: Codec
CODEC_FLAT: Codec
CODEC_OPQ: Codec
VECTOR_DTYPE_UNSPECIFIED: VectorDType
VECTOR_DTYPE_FLOAT32: VectorDType
VECTOR_DTYPE_UINT8: VectorDType
VECTOR_DTYPE_INT8: VectorDType
CENTROID_INDEX_UNSPECIFIED: CentroidIndex
CENTROID_INDEX_AUTO: CentroidIndex
CENTROID_INDEX_FLAT: CentroidIndex
CENTROID_INDEX_HNSW: CentroidIndex
COLLECTION_STATE_UNSPECIFIED: CollectionState
COLLECTION_STATE_OPENING: CollectionState
COLLECTION_STATE_READY: CollectionState
COLLECTION_STATE_FAILED: CollectionState
WRITE_MODE_UNSPECIFIED: WriteMode
WRITE_MODE_UPSERT: WriteMode
WRITE_MODE_ADD: WriteMode

class VectorBatch(_message.Message):
    __slots__ = ("data", "dim")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dim: int
    def __init__(self, data: _Optional[bytes] = ..., dim: _Optional[int] = ...) -> None: ...

class CollectionConfig(_message.Message):
    __slots__ = ("dim", "metric", "posting_size", "max_posting_size", "replica_cap", "eps1", "codec", "pq_m", "matryoshka", "d_route", "d_scan", "d_rerank", "train_sample_mb", "kmeans_iters", "centroid_index", "hnsw_threshold", "seed", "tail_norms", "vector_dtype")
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    POSTING_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_POSTING_SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_CAP_FIELD_NUMBER: _ClassVar[int]
    EPS1_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PQ_M_FIELD_NUMBER: _ClassVar[int]
    MATRYOSHKA_FIELD_NUMBER: _ClassVar[int]
    D_ROUTE_FIELD_NUMBER: _ClassVar[int]
    D_SCAN_FIELD_NUMBER: _ClassVar[int]
    D_RERANK_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLE_MB_FIELD_NUMBER: _ClassVar[int]
    KMEANS_ITERS_FIELD_NUMBER: _ClassVar[int]
    CENTROID_INDEX_FIELD_NUMBER: _ClassVar[int]
    HNSW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TAIL_NORMS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DTYPE_FIELD_NUMBER: _ClassVar[int]
    dim: int
    metric: Metric
    posting_size: int
    max_posting_size: int
    replica_cap: int
    eps1: float
    codec: Codec
    pq_m: int
    matryoshka: bool
    d_route: int
    d_scan: int
    d_rerank: int
    train_sample_mb: float
    kmeans_iters: int
    centroid_index: CentroidIndex
    hnsw_threshold: int
    seed: int
    tail_norms: bool
    vector_dtype: VectorDType
    def __init__(self, dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., posting_size: _Optional[int] = ..., max_posting_size: _Optional[int] = ..., replica_cap: _Optional[int] = ..., eps1: _Optional[float] = ..., codec: _Optional[_Union[Codec, str]] = ..., pq_m: _Optional[int] = ..., matryoshka: _Optional[bool] = ..., d_route: _Optional[int] = ..., d_scan: _Optional[int] = ..., d_rerank: _Optional[int] = ..., train_sample_mb: _Optional[float] = ..., kmeans_iters: _Optional[int] = ..., centroid_index: _Optional[_Union[CentroidIndex, str]] = ..., hnsw_threshold: _Optional[int] = ..., seed: _Optional[int] = ..., tail_norms: _Optional[bool] = ..., vector_dtype: _Optional[_Union[VectorDType, str]] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "state", "error", "config", "count", "postings", "disk_bytes", "tuned_recall_targets", "info_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TUNED_RECALL_TARGETS_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: CollectionState
    error: str
    config: CollectionConfig
    count: int
    postings: int
    disk_bytes: int
    tuned_recall_targets: _containers.RepeatedScalarFieldContainer[float]
    info_json: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[CollectionState, str]] = ..., error: _Optional[str] = ..., config: _Optional[_Union[CollectionConfig, _Mapping]] = ..., count: _Optional[int] = ..., postings: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., tuned_recall_targets: _Optional[_Iterable[float]] = ..., info_json: _Optional[str] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: CollectionConfig
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[CollectionConfig, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "vectors", "ids", "mode", "model")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    vectors: VectorBatch
    ids: bytes
    mode: WriteMode
    model: str
    def __init__(self, collection: _Optional[str] = ..., vectors: _Optional[_Union[VectorBatch, _Mapping]] = ..., ids: _Optional[bytes] = ..., mode: _Optional[_Union[WriteMode, str]] = ..., model: _Optional[str] = ...) -> None: ...

class WriteAck(_message.Message):
    __slots__ = ("batch", "written", "total_written", "ids")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    batch: int
    written: int
    total_written: int
    ids: bytes
    def __init__(self, batch: _Optional[int] = ..., written: _Optional[int] = ..., total_written: _Optional[int] = ..., ids: _Optional[bytes] = ...) -> None: ...

class GetVectorsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: bytes
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[bytes] = ...) -> None: ...

class GetVectorsResponse(_message.Message):
    __slots__ = ("ids", "vectors")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    ids: bytes
    vectors: VectorBatch
    def __init__(self, ids: _Optional[bytes] = ..., vectors: _Optional[_Union[VectorBatch, _Mapping]] = ...) -> None: ...

class DeleteVectorsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: bytes
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[bytes] = ...) -> None: ...

class DeleteVectorsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class SearchParams(_message.Message):
    __slots__ = ("max_postings", "eps2", "refine_factor", "fetch_budget_mb", "d_route", "d_rerank", "target_recall")
    MAX_POSTINGS_FIELD_NUMBER: _ClassVar[int]
    EPS2_FIELD_NUMBER: _ClassVar[int]
    REFINE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    FETCH_BUDGET_MB_FIELD_NUMBER: _ClassVar[int]
    D_ROUTE_FIELD_NUMBER: _ClassVar[int]
    D_RERANK_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    max_postings: int
    eps2: float
    refine_factor: float
    fetch_budget_mb: float
    d_route: int
    d_rerank: int
    target_recall: float
    def __init__(self, max_postings: _Optional[int] = ..., eps2: _Optional[float] = ..., refine_factor: _Optional[float] = ..., fetch_budget_mb: _Optional[float] = ..., d_route: _Optional[int] = ..., d_rerank: _Optional[int] = ..., target_recall: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "k", "params", "return_vectors", "return_stats", "params_as_given", "model")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RETURN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    RETURN_STATS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_AS_GIVEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: VectorBatch
    k: int
    params: SearchParams
    return_vectors: bool
    return_stats: bool
    params_as_given: bool
    model: str
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Union[VectorBatch, _Mapping]] = ..., k: _Optional[int] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., return_vectors: _Optional[bool] = ..., return_stats: _Optional[bool] = ..., params_as_given: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...

class SearchStats(_message.Message):
    __slots__ = ("queries", "postings_probed", "postings_pruned", "postings_fetched", "bytes_read", "candidates_scored", "reranked", "seconds", "per_query")
    class SecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_PROBED_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_PRUNED_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_SCORED_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    queries: int
    postings_probed: int
    postings_pruned: int
    postings_fetched: int
    bytes_read: int
    candidates_scored: int
    reranked: int
    seconds: _containers.ScalarMap[str, float]
    per_query: QueryStats
    def __init__(self, queries: _Optional[int] = ..., postings_probed: _Optional[int] = ..., postings_pruned: _Optional[int] = ..., postings_fetched: _Optional[int] = ..., bytes_read: _Optional[int] = ..., candidates_scored: _Optional[int] = ..., reranked: _Optional[int] = ..., seconds: _Optional[_Mapping[str, float]] = ..., per_query: _Optional[_Union[QueryStats, _Mapping]] = ...) -> None: ...

class QueryStats(_message.Message):
    __slots__ = ("postings_probed", "candidates_scored", "bytes_read", "reranked")
    POSTINGS_PROBED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_SCORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    postings_probed: bytes
    candidates_scored: bytes
    bytes_read: bytes
    reranked: bytes
    def __init__(self, postings_probed: _Optional[bytes] = ..., candidates_scored: _Optional[bytes] = ..., bytes_read: _Optional[bytes] = ..., reranked: _Optional[bytes] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("num_queries", "k", "ids", "distances", "vectors", "stats")
    NUM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    num_queries: int
    k: int
    ids: bytes
    distances: bytes
    vectors: VectorBatch
    stats: SearchStats
    def __init__(self, num_queries: _Optional[int] = ..., k: _Optional[int] = ..., ids: _Optional[bytes] = ..., distances: _Optional[bytes] = ..., vectors: _Optional[_Union[VectorBatch, _Mapping]] = ..., stats: _Optional[_Union[SearchStats, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "max_message_bytes", "max_k", "max_batch", "auth_required")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    version: str
    max_message_bytes: int
    max_k: int
    max_batch: int
    auth_required: bool
    def __init__(self, version: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., max_k: _Optional[int] = ..., max_batch: _Optional[int] = ..., auth_required: _Optional[bool] = ...) -> None: ...
