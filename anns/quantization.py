"""Codecs: what a posting holds for each vector, and how fetched postings are scanned.

A codec turns float32 vectors into fixed-size byte codes (``code_size`` bytes each) and scans
codes that came from disk in faiss: the fetched postings become the inverted lists of a scratch
``IndexIVF`` built for one chunk of queries, and ``search_preassigned`` scores every query
against exactly the postings routing chose for it, multi-threaded in C++. Codes never depend
on the posting they sit in (no residual encoding), so a replica is the same bytes everywhere.

A codec sees the first ``d_scan`` dims of the collection space (its ``dim``): the caller
slices vectors and queries. Three codecs: ``flat`` (float32), ``sq8`` (a byte per dim) and
``opq`` (``pq_m`` bytes per vector: OPQ rotation + product quantizer, scanned by ADC with one
look-up table per query).
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator
from typing import ClassVar

import faiss
import numpy as np

from anns.config import CodecName, Metric


def faiss_metric(metric: Metric) -> int:
    """The faiss metric a collection scores with (cosine is inner product on unit vectors)."""
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


#: A scan of at most this many lists and bytes of postings (a query or a few: one search's
#: ``max_postings``) reuses its thread's scratch index instead of building one: building
#: costs more than such a scan (~25 us, 100-180 us on a loaded machine, against a scan of
#: 8 postings in ~30 us). The scratch keeps the capacity its lists grew to, at most the
#: byte bound, per thread that searches.
SCRATCH_LISTS = 16
SCRATCH_BYTES = 256 << 10


class Codec(abc.ABC):
    """Encodes vectors into codes and scans codes with faiss."""

    name: ClassVar[str]

    def __init__(self, dim: int, metric: Metric) -> None:
        self.dim = dim
        self.metric = metric
        self._scratch = threading.local()

    @property
    @abc.abstractmethod
    def code_size(self) -> int:
        """Bytes per encoded vector."""

    @property
    def is_trained(self) -> bool:
        return True

    @property
    def nbytes(self) -> int:
        """Bytes of trained parameters the codec holds (0 for one without any)."""
        return 0

    def train(self, sample: np.ndarray) -> None:  # noqa: B027 - optional for codecs
        """Fit the codec on float32 [n, dim] (a no-op for codecs without parameters)."""

    @abc.abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, dim] -> uint8 [n, code_size]."""

    @abc.abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint8 [n, code_size] -> float32 [n, dim] (the vectors the scan sees)."""

    @abc.abstractmethod
    def _empty_ivf(self, nlist: int) -> faiss.IndexIVF:
        """An empty, trained IndexIVF with ``nlist`` lists whose codes are this codec's."""

    @abc.abstractmethod
    def to_bytes(self) -> bytes:
        """Serialise the trained parameters."""

    @classmethod
    @abc.abstractmethod
    def from_bytes(cls, dim: int, metric: Metric, blob: bytes) -> Codec:
        """Inverse of :meth:`to_bytes`."""

    def _scan_queries(self, queries: np.ndarray) -> np.ndarray:
        """Queries as the scratch IVF index expects them (a codec with a rotation applies it)."""
        return queries

    def scan(
        self,
        queries: np.ndarray,
        lists: list[tuple[np.ndarray, np.ndarray]],
        assign: np.ndarray,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Score queries against the postings assigned to them; best ``k`` per query.

        ``lists[j]`` holds (ids int64 [m], codes uint8 [m, code_size]) of local list j;
        ``assign`` is int64 [q, p] of local list numbers, -1 for lists not probed. Returns
        (distances float32 [q, k], ids int64 [q, k]) in faiss order (ascending for l2,
        descending for ip), ids -1 where fewer than k candidates exist. An id stored in two
        probed postings may appear twice.
        """
        queries = self._scan_queries(queries)
        # faiss clamps nprobe to nlist and would then misread the rows of ``assign``
        nlist = max(len(lists), assign.shape[1], 1)
        total = sum(len(ids) for ids, _ in lists)
        small = nlist <= SCRATCH_LISTS and total * (8 + self.code_size) <= SCRATCH_BYTES
        index = self._scratch_index() if small else self._empty_ivf(nlist)
        invlists = index.invlists
        try:
            for j, (ids, codes) in enumerate(lists):
                if len(ids):
                    invlists.add_entries(j, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
            index.ntotal = total
            index.nprobe = assign.shape[1]
            distances, labels = index.search_preassigned(queries, k, assign, None)
        finally:
            if small:
                invlists.reset()  # empties the lists, keeps their (bounded) capacity
                index.ntotal = 0
        return distances, labels

    def _scratch_index(self) -> faiss.IndexIVF:
        """This thread's reusable empty index of SCRATCH_LISTS lists."""
        index = getattr(self._scratch, "index", None)
        if index is None:
            index = self._scratch.index = self._empty_ivf(SCRATCH_LISTS)
        return index


class SQ8Codec(Codec):
    """faiss 8-bit scalar quantizer: one byte per dimension, per-dim ranges trained."""

    name = "sq8"

    def __init__(
        self, dim: int, metric: Metric, trained: faiss.IndexScalarQuantizer | None = None
    ) -> None:
        super().__init__(dim, metric)
        # The IndexScalarQuantizer owns the quantizer: keeping it (not a bare .sq proxy into
        # it) keeps the memory alive for as long as the codec is.
        self._holder = trained or faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2
        )
        self._ranges: np.ndarray | None = None

    @property
    def code_size(self) -> int:
        return int(self._holder.sq.code_size)

    @property
    def is_trained(self) -> bool:
        return bool(self._holder.is_trained)

    def train(self, sample: np.ndarray) -> None:
        self._holder.train(np.ascontiguousarray(sample, dtype=np.float32))
        self._ranges = None
        self._scratch = threading.local()  # scratch indexes hold the old ranges

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self._holder.sa_encode(np.ascontiguousarray(x, dtype=np.float32))  # type: ignore[no-any-return]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self._holder.sa_decode(np.ascontiguousarray(codes, dtype=np.uint8))  # type: ignore[no-any-return]

    def _empty_ivf(self, nlist: int) -> faiss.IndexIVF:
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatL2(self.dim),
            self.dim,
            nlist,
            faiss.ScalarQuantizer.QT_8bit,
            faiss_metric(self.metric),
            False,  # encode raw vectors, not residuals: codes are posting-independent
        )
        # copy the trained ranges in place (assigning the struct through swig does not)
        faiss.copy_array_to_vector(self._trained_ranges(), index.sq.trained)
        index.is_trained = True
        return index

    @property
    def nbytes(self) -> int:
        ranges = 0 if self._ranges is None else int(self._ranges.nbytes)
        return 4 * int(self._holder.sq.trained.size()) + ranges

    def _trained_ranges(self) -> np.ndarray:
        if self._ranges is None:
            self._ranges = faiss.vector_to_array(self._holder.sq.trained)
        return self._ranges

    def to_bytes(self) -> bytes:
        return bytes(faiss.serialize_index(self._holder))

    @classmethod
    def from_bytes(cls, dim: int, metric: Metric, blob: bytes) -> SQ8Codec:
        holder = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))  # owns itself
        return cls(dim, metric, holder)


class FlatCodec(Codec):
    """Full float32 vectors in the postings: exact scan, four bytes per dimension."""

    name = "flat"

    @property
    def code_size(self) -> int:
        return 4 * self.dim

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(len(x), self.code_size)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes).view("<f4").reshape(len(codes), self.dim)

    def _empty_ivf(self, nlist: int) -> faiss.IndexIVF:
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatL2(self.dim), self.dim, nlist, faiss_metric(self.metric)
        )
        index.is_trained = True  # nothing to train; its (unused) quantizer is empty
        return index

    def to_bytes(self) -> bytes:
        return b""

    @classmethod
    def from_bytes(cls, dim: int, metric: Metric, blob: bytes) -> FlatCodec:
        return cls(dim, metric)


#: OPQ training alternates rotation and PQ fits: faiss defaults to 50 alternations (40 k-means
#: iterations in the first, 4 after) on up to 65,536 vectors, minutes for a few hundred dims on
#: two cores. The rotation's gain flattens after about ten alternations and a few thousand
#: vectors; the final PQ is then trained on the whole codec sample with its full iterations.
#: faiss computes exhaustive distances with BLAS only for batches of at least this many
#: queries (faiss 1.15's default is 128,000, so a k-means step never does). PQ training
#: assigns thousands of points to 256 centroids of a few dims per sub-quantizer: through
#: BLAS it measured 12x faster (16,384 x 256 dims, m=64: 1.6 s against 20 s).
BLAS_THRESHOLD_FOR_TRAINING = 20


@contextlib.contextmanager
def _blas_distances() -> Iterator[None]:
    """Lower faiss's BLAS threshold (a process-wide setting) for the duration of a training."""
    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD_FOR_TRAINING
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


OPQ_ITERATIONS = 12
OPQ_FIRST_PQ_ITERATIONS = 10
OPQ_TRAIN_POINTS = 8192


class OPQCodec(Codec):
    """OPQ rotation + product quantizer: ``m`` sub-quantizers of 256 centroids (one byte) each.

    The OPQ matrix rotates the vector so that its energy spreads evenly over the ``m``
    sub-spaces, then each sub-vector is replaced by its nearest sub-centroid. When ``m`` does not
    divide ``dim`` the rotation maps onto ``m * (dim // m)`` dims (a projection that drops the
    least useful directions). A scan is ADC: for each query one table of ``m x 256`` partial
    distances, then a sum of ``m`` look-ups per code, all inside faiss's IVF-PQ scanner.

    A training set under 256 vectors (a tiny first batch) gets fewer bits per sub-quantizer
    (2^bits <= vectors), still a valid codec; ``code_size`` follows.
    """

    name = "opq"

    def __init__(
        self, dim: int, metric: Metric, m: int = 64, trained: faiss.IndexPreTransform | None = None
    ) -> None:
        super().__init__(dim, metric)
        self.m = max(1, min(m, dim))
        self._holder = trained
        self._opq: faiss.LinearTransform | None = None
        self._pq_centroids: np.ndarray | None = None
        if trained is not None:
            self._bind()

    @property
    def d_out(self) -> int:
        """Dims after the OPQ rotation (a multiple of ``m``)."""
        return self.m * (self.dim // self.m)

    @property
    def nbits(self) -> int:
        return self._nbits if self._holder is not None else 8

    @property
    def code_size(self) -> int:
        # read once in _bind: every scan asks, and a swig downcast costs ~10-30 us
        return self._code_size if self._holder is not None else self.m

    @property
    def is_trained(self) -> bool:
        return self._holder is not None and bool(self._holder.is_trained)

    @property
    def nbytes(self) -> int:
        """The OPQ matrix, the PQ centroids, and the copy of them each scan starts from."""
        if self._holder is None or self._opq is None:
            return 0
        rotation = 4 * (int(self._opq.A.size()) + int(self._opq.b.size()))
        copy = 0 if self._pq_centroids is None else int(self._pq_centroids.nbytes)
        return rotation + 4 * int(self._pq().pq.centroids.size()) + copy

    def train(self, sample: np.ndarray) -> None:
        x = np.ascontiguousarray(sample, dtype=np.float32)
        if len(x) == 0:
            raise ValueError("OPQCodec.train needs at least one vector")
        nbits = 8 if len(x) >= 256 else max(1, int(np.log2(max(len(x), 2))))
        if len(x) < max(self.dim, 2):
            # faiss's OPQMatrix::train sizes a [dim, dim] buffer by the sample count (a heap
            # overflow under dim rows) and k-means wants a point per centroid: a tiny first
            # batch trains on copies of itself, which changes neither the rotation it can
            # learn nor the codes of its own vectors
            x = np.tile(x, (-(-max(self.dim, 2) // len(x)), 1))
        opq = faiss.OPQMatrix(self.dim, self.m, self.d_out)
        opq.niter = OPQ_ITERATIONS
        opq.niter_pq_0 = OPQ_FIRST_PQ_ITERATIONS
        opq.max_train_points = OPQ_TRAIN_POINTS
        # the PQ that OPQ alternates with: 8 bits like the final one, quiet about small samples
        inner = faiss.ProductQuantizer(self.d_out, self.m, nbits)
        inner.cp.min_points_per_centroid = 1
        opq.pq = inner
        pq = faiss.IndexPQ(self.d_out, self.m, nbits, faiss_metric(self.metric))
        pq.pq.cp.min_points_per_centroid = 1
        holder = faiss.IndexPreTransform(opq, pq)  # keeps Python references to both
        with _blas_distances():
            holder.train(x)
        self._holder = holder
        self._bind()

    def _bind(self) -> None:
        assert self._holder is not None
        self._opq = faiss.downcast_VectorTransform(self._holder.chain.at(0))
        pq = self._pq().pq
        self._pq_centroids = faiss.vector_to_array(pq.centroids)
        self._code_size, self._nbits = int(pq.code_size), int(pq.nbits)
        self._scratch = threading.local()  # scratch indexes hold the old centroids

    def _pq(self) -> faiss.IndexPQ:
        assert self._holder is not None
        return faiss.downcast_index(self._holder.index)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self._trained().sa_encode(np.ascontiguousarray(x, dtype=np.float32))  # type: ignore[no-any-return]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self._trained().sa_decode(np.ascontiguousarray(codes, dtype=np.uint8))  # type: ignore[no-any-return]

    def _trained(self) -> faiss.IndexPreTransform:
        if self._holder is None:
            raise RuntimeError("OPQCodec used before train()")
        return self._holder

    def _scan_queries(self, queries: np.ndarray) -> np.ndarray:
        assert self._opq is not None
        return self._opq.apply(np.ascontiguousarray(queries, dtype=np.float32))  # type: ignore[no-any-return]

    def _empty_ivf(self, nlist: int) -> faiss.IndexIVF:
        assert self._pq_centroids is not None
        index = faiss.IndexIVFPQ(
            faiss.IndexFlatL2(self.d_out), self.d_out, nlist, self.m, self.nbits,
            faiss_metric(self.metric),
        )
        index.by_residual = False  # codes of the vectors themselves: posting-independent
        faiss.copy_array_to_vector(self._pq_centroids, index.pq.centroids)
        index.is_trained = True
        return index

    def to_bytes(self) -> bytes:
        return bytes(faiss.serialize_index(self._trained()))

    @classmethod
    def from_bytes(cls, dim: int, metric: Metric, blob: bytes) -> OPQCodec:
        holder = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        pq = faiss.downcast_index(holder.index)
        return cls(dim, metric, int(pq.pq.M), holder)


_CODECS: dict[str, type[Codec]] = {
    SQ8Codec.name: SQ8Codec, FlatCodec.name: FlatCodec, OPQCodec.name: OPQCodec,
}


def make_codec(name: CodecName, dim: int, metric: Metric, pq_m: int = 64) -> Codec:
    """A new, untrained codec of the given kind over ``dim`` (= d_scan) dims."""
    if name == OPQCodec.name:
        return OPQCodec(dim, metric, pq_m)
    return _CODECS[name](dim, metric)


def load_codec(name: CodecName, dim: int, metric: Metric, blob: bytes) -> Codec:
    """A trained codec from :meth:`Codec.to_bytes` output."""
    return _CODECS[name].from_bytes(dim, metric, blob)
