"""Configuration: frozen pydantic models, each knob documented with what raising it costs.

Three scopes, three models:

* :class:`IndexConfig` is fixed when a collection is created or built and stored with it
  (dimension, metric, how postings are formed and what they hold).
* :class:`StorageConfig` is chosen each time a collection is opened (memory budget, I/O mode).
* :class:`SearchParams` may change with every search call.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from anns.errors import InvalidArgumentError

Metric = Literal["l2", "ip", "cosine"]
CodecName = Literal["sq8", "flat", "opq"]
CentroidIndexKind = Literal["auto", "flat", "hnsw"]
VectorDType = Literal["float32", "uint8", "int8"]

#: Largest k a search accepts. Results are materialised as dense [q, k] arrays and every
#: query reranks at least k full vectors, so k is a memory and I/O multiplier.
MAX_K = 1024


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_M = TypeVar("_M", bound=_Frozen)


class IndexConfig(_Frozen):
    """How a collection is laid out. Fixed at create/build time and stored with it."""

    dim: int = Field(gt=0, le=65536)
    """Vector dimension."""

    metric: Metric = "l2"
    """``l2``: squared Euclidean distance, smaller is closer. ``ip``: inner product, larger is
    closer. ``cosine``: vectors and queries are L2-normalised on the way in and scored by inner
    product (cosine similarity), larger is closer; stored vectors are the normalised ones."""

    posting_size: int = Field(default=32, ge=1, le=100_000)
    """Target number of vectors whose *nearest* centroid is a posting's (the clustering leaf
    limit); the number of centroids kept in RAM is about n / posting_size. Raising it shrinks RAM
    and routing time but makes every probed posting a bigger read and scan. On Fashion-MNIST
    (64-byte OPQ codes) 32 read 11% fewer bytes per query than 64 at recall@10 0.95 and the
    same QPS, for 0.24 MB more centroids; 16 read no fewer and routed slower."""

    max_posting_size: int = Field(default=128, ge=1, le=1_000_000)
    """Hard cap on entries (primaries plus replicas) in one posting: bounds the bytes of one
    disk read. Replicas that would exceed it are dropped, farthest first; a posting whose own
    vectors exceed it (after inserts) is split in two."""

    replica_cap: int = Field(default=8, ge=1, le=64)
    """Most postings one vector may be stored in (closure replication). Raising it can raise
    recall of boundary vectors at the cost of disk space and bytes scanned per posting."""

    eps1: float = Field(default=0.3, ge=0.0, le=10.0)
    """Closure replication: a vector also joins posting j when dist(x, c_j) <= (1 + eps1) *
    dist(x, c_1) (true Euclidean distances), subject to the RNG rule and replica_cap."""

    codec: CodecName = "sq8"
    """What postings hold for the scan, for the first ``d_scan`` dims of each vector.
    ``sq8``: one byte per dimension (faiss 8-bit scalar quantizer), a quarter of the bytes of
    ``flat`` (float32). ``opq``: ``pq_m`` bytes per vector (a learned OPQ rotation, then
    product quantization), scanned by table look-ups (ADC): far fewer bytes read and scanned
    per posting, at more ranking error for the rerank to repair. The exact rerank on full
    vectors follows every codec."""

    pq_m: int = Field(default=64, ge=1, le=4096)
    """``opq`` only: sub-quantizers, i.e. bytes per code (8 bits each). Capped at ``d_scan``;
    when it does not divide ``d_scan`` the OPQ rotation maps onto the largest multiple of it.
    Raising it makes codes more exact and postings bigger."""

    tail_norms: bool = True
    """When ``d_scan`` is less than ``dim``: each code also stores the norm of the dims beyond
    ``d_scan`` (two bytes), and the scan adds an estimate of what those dims contribute to the
    distance (see :class:`anns.quantization.TailCodec`). Fewer candidates then need the rerank
    for the same recall. No effect when the codes hold every dim, nor for the cosine metric
    (a unit vector's tail norm follows from its prefix)."""

    vector_dtype: VectorDType = "float32"
    """How the full vectors (what the exact rerank reads) are stored. ``float32``: in the
    collection basis, 4 bytes a dim. ``uint8`` / ``int8``: for data whose values are integers
    (pixels, SIFT-like descriptors, integer-quantised embeddings), stored exactly as given at
    one byte a dim, so every rerank read is a quarter of the bytes and the rerank is still
    exact (it scores in the model's own space, where distances equal the basis's). Every
    vector of the base model must then hold integers in the type's range (a write that does
    not is refused, naming the value); queries may hold any floats. Not with ``cosine``,
    whose unit-length vectors are not integers. Vectors of later model versions
    (:meth:`anns.Collection.add_model`) are stored as float32."""

    matryoshka: bool = False
    """True when the embedding model is Matryoshka-trained (its prefixes are embeddings):
    vectors are used as given. False: a PCA rotation learned at build orders the dims by
    energy so that prefixes carry the most information first (exact distances unchanged)."""

    d_route: int | None = Field(default=None, ge=1)
    """Dims the clustering and routing use (None: ``d_scan``). The centroids live in RAM at
    this dim, so memory and routing time scale with it; too few dims route queries to the
    wrong postings. A search may route on fewer."""

    d_scan: int | None = Field(default=None, ge=1)
    """Dims the postings' codes hold (None: all); at least ``d_route``. Fewer dims make each
    code byte carry more of what matters (AdANNS); too few lose ranking the rerank must
    repair. Fixed by what is stored: a search cannot change it."""

    d_rerank: int | None = Field(default=None, ge=1)
    """Dims of the exact rerank on full vectors (None: all). A search may use fewer."""

    train_sample_mb: float = Field(default=128.0, gt=0)
    """MiB of input vectors sampled to train clustering and the codec (all of a smaller input).
    A larger sample places centroids better; the sample is held in RAM during the build."""

    kmeans_iters: int = Field(default=12, ge=1, le=200)
    """2-means iterations per bisection of the hierarchical balanced clustering."""

    centroid_index: CentroidIndexKind = "auto"
    """The RAM index over centroids. ``flat`` is exact and fastest for a few thousand
    centroids; ``hnsw`` (faiss IndexHNSWFlat) wins beyond ``hnsw_threshold`` centroids at some
    routing recall and about 2x the centroid memory; ``auto`` picks by count."""

    hnsw_threshold: int = Field(default=20_000, ge=1)
    """Centroid count from which ``auto`` picks HNSW."""

    seed: int = 0
    """Seed for sampling and k-means: the same input and seed give the same collection."""

    @model_validator(mode="after")
    def _posting_bounds(self) -> IndexConfig:
        if self.max_posting_size < self.posting_size:
            raise ValueError(
                f"max_posting_size {self.max_posting_size} is smaller than "
                f"posting_size {self.posting_size}"
            )
        for name in ("d_route", "d_scan", "d_rerank"):
            value = getattr(self, name)
            if value is not None and value > self.dim:
                raise ValueError(f"{name} {value} is larger than dim {self.dim}")
        if self.vector_dtype != "float32" and self.metric == "cosine":
            raise ValueError(
                f"vector_dtype {self.vector_dtype} stores vectors exactly as given, and the "
                f"cosine metric stores them normalised to unit length (not integers): use "
                f"float32, or normalise the data and pick ip"
            )
        if self.route_dims > self.scan_dims:
            raise ValueError(
                f"d_route {self.route_dims} is larger than d_scan {self.scan_dims}: routing "
                f"uses a prefix of the scanned dims"
            )
        return self

    @property
    def route_dims(self) -> int:
        return self.d_route or self.scan_dims

    @property
    def scan_dims(self) -> int:
        return self.d_scan or self.dim

    @property
    def rerank_dims(self) -> int:
        return self.d_rerank or self.dim


class StorageConfig(_Frozen):
    """How a collection's RocksDB is opened. Chosen per open, not stored."""

    block_cache_bytes: int = Field(default=2 << 20, ge=0)
    """Bound of RocksDB's block cache: postings read by repeated queries are served from it,
    with the index and filter blocks of the postings, records and meta families (full
    vectors bypass it, see :mod:`anns.storage`). It is counted in the process's RSS, and a
    cache that churns leaves the heap larger than its bound (freed blocks between live
    ones). 0 disables the cache: every posting lookup then rereads its index block."""

    direct_reads: bool = False
    """Read SST files with O_DIRECT, bypassing the OS page cache, so that the process's RSS is
    the whole memory cost of serving (honest figures). Off, the page cache holds recently read
    postings outside the process, which speeds repeated reads on a machine with spare RAM."""

    io_threads: int = Field(default=16, ge=1, le=1024)
    """Threads that issue the reads of one multi-get concurrently. Disks serve many reads in
    flight far faster than one at a time; each thread costs memory (its stack and RocksDB's
    per-thread state, about 0.15 MiB). On the benchmark machine 16 reach 95% of the batch
    throughput of 64 at 5 MiB less."""

    read_only: bool = False
    """Open without write access (several processes may then read one collection)."""


class SearchParams(_Frozen):
    """Knobs of one search call. Defaults favour recall@10 around 0.95 on typical data."""

    max_postings: int = Field(default=24, ge=1, le=100_000)
    """Cap on postings probed per query (``nprobe``). Raising it raises recall and the bytes
    read and scanned per query."""

    eps2: float = Field(default=0.6, ge=0.0)
    """Query-aware dynamic pruning: probe posting j only if dist(q, c_j) <= (1 + eps2) *
    dist(q, c_1). Smaller prunes harder: easy queries then read fewer postings. ``math.inf``
    turns pruning off (only ``max_postings`` limits the probes)."""

    refine_factor: float = Field(default=1.5, ge=1.0, le=1000.0)
    """Candidates reranked on full vectors per query = ceil(k * refine_factor). Raising it
    repairs more of the codec's ranking error, at one full-vector read per extra candidate."""

    fetch_budget_mb: float = Field(default=32.0, gt=0, le=1_000_000)
    """Postings held in memory at once by a batch, in MiB. A batch is split into chunks of
    queries (ordered so that queries sharing postings go together) whose postings fit; each
    posting is read once per chunk. Raising it lets more queries share one read of a posting
    (fewer reads per batch) at the cost of that much transient memory."""

    d_route: int | None = Field(default=None, ge=1)
    """Route on this many dims (None: the collection's ``d_route``); at most that. Fewer is
    cheaper routing in RAM and coarser choice of postings."""

    d_rerank: int | None = Field(default=None, ge=1)
    """Rerank on this many dims (None: the collection's ``d_rerank``); at most ``dim``. Fewer
    is cheaper arithmetic (not fewer bytes read) and approximate final distances."""

    target_recall: float | None = Field(default=None, gt=0.0, le=1.0)
    """Use the collection's tuned profile for this recall target (``anns tune``): the profile
    of the smallest stored target at least this high supplies every knob not set here."""

    def rerank_depth(self, k: int) -> int:
        """Number of candidates reranked exactly for a search of ``k`` neighbours."""
        # rounded first: k x 1.1 is 110.00000000000001 in floats, 110 candidates, not 111
        return max(k, math.ceil(round(k * self.refine_factor, 9)))


def validated(model: type[_M], **fields: Any) -> _M:
    """Build a config model, turning pydantic's ValidationError into InvalidArgumentError
    whose message names each bad field and why."""
    try:
        return model(**fields)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or model.__name__}: {err['msg']}"
            for err in e.errors()
        )
        raise InvalidArgumentError(f"invalid {model.__name__}: {problems}") from None
