"""Codecs: what a posting holds for each vector, and how fetched postings are scanned.

A codec turns float32 vectors into fixed-size byte codes (``code_size`` bytes each) and scans
codes that came from disk in faiss: the fetched postings become the inverted lists of a scratch
``IndexIVF`` built for one chunk of queries, and ``search_preassigned`` scores every query
against exactly the postings routing chose for it, multi-threaded in C++. Codes never depend
on the posting they sit in (no residual encoding), so a replica is the same bytes everywhere.

Issue 3 adds OPQ/PQ codes of a prefix; it plugs in here as another :class:`Codec`.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import faiss
import numpy as np

from anns.config import CodecName, Metric


def faiss_metric(metric: Metric) -> int:
    """The faiss metric a collection scores with (cosine is inner product on unit vectors)."""
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


class Codec(abc.ABC):
    """Encodes vectors into codes and scans codes with faiss."""

    name: ClassVar[str]

    def __init__(self, dim: int, metric: Metric) -> None:
        self.dim = dim
        self.metric = metric

    @property
    @abc.abstractmethod
    def code_size(self) -> int:
        """Bytes per encoded vector."""

    @property
    def is_trained(self) -> bool:
        return True

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
        # faiss clamps nprobe to nlist and would then misread the rows of ``assign``
        index = self._empty_ivf(max(len(lists), assign.shape[1], 1))
        invlists = index.invlists
        for j, (ids, codes) in enumerate(lists):
            if len(ids):
                invlists.add_entries(j, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        index.ntotal = sum(len(ids) for ids, _ in lists)
        index.nprobe = assign.shape[1]
        distances, labels = index.search_preassigned(queries, k, assign, None)
        return distances, labels


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


_CODECS: dict[str, type[Codec]] = {SQ8Codec.name: SQ8Codec, FlatCodec.name: FlatCodec}


def make_codec(name: CodecName, dim: int, metric: Metric) -> Codec:
    """A new, untrained codec of the given kind."""
    return _CODECS[name](dim, metric)


def load_codec(name: CodecName, dim: int, metric: Metric, blob: bytes) -> Codec:
    """A trained codec from :meth:`Codec.to_bytes` output."""
    return _CODECS[name].from_bytes(dim, metric, blob)
