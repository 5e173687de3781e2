"""anns: a memory-disk hybrid vector search engine.

Centroids of a balanced clustering live in RAM; posting lists live in RocksDB; each search
probes few postings, scans their codes posting-major in faiss, and reranks exactly::

    import anns
    anns.build("my.coll", vectors)                  # bulk build, or Collection.create + add
    with anns.Collection.open("my.coll") as coll:
        result = coll.search(queries, k=10)          # result.ids, result.distances

``anns.Client("host:port")`` reaches collections on a server (``anns serve``) the same way; it
is imported on first use, so the embedded library needs no gRPC.
"""

from typing import Any as _Any

from anns import threads as _threads

# before faiss is first imported (see anns.threads)
_threads.prefer_passive_openmp()

from anns.bulk import BuildSummary, build
from anns.config import MAX_K, IndexConfig, SearchParams, StorageConfig
from anns.errors import (
    AlreadyExistsError,
    AnnsError,
    CollectionClosedError,
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptCollectionError,
    DimensionMismatchError,
    DTypeError,
    DuplicateIdsError,
    EmptyCollectionError,
    FailedPreconditionError,
    FormatVersionError,
    IdExistsError,
    IncompatibleModelError,
    IncompleteBuildError,
    InputFormatError,
    InvalidArgumentError,
    LimitExceededError,
    NonFiniteError,
    NotFoundError,
)
from anns.index import Collection
from anns.search import QueryStats, SearchResult, SearchStats

_threads.limit_blas_threads()

__version__ = "0.1.0"

__all__ = [
    "MAX_K",
    "AlreadyExistsError",
    "AnnsError",
    "BuildSummary",
    "Collection",
    "CollectionClosedError",
    "CollectionExistsError",
    "Client",
    "CollectionNotFoundError",
    "CorruptCollectionError",
    "DTypeError",
    "DimensionMismatchError",
    "DuplicateIdsError",
    "EmptyCollectionError",
    "FailedPreconditionError",
    "FormatVersionError",
    "IdExistsError",
    "IncompatibleModelError",
    "IncompleteBuildError",
    "IndexConfig",
    "InputFormatError",
    "InvalidArgumentError",
    "LimitExceededError",
    "NonFiniteError",
    "NotFoundError",
    "QueryStats",
    "SearchParams",
    "SearchResult",
    "SearchStats",
    "StorageConfig",
    "build",
    "__version__",
]


def __getattr__(name: str) -> _Any:
    """``anns.Client`` is imported on first use: it needs gRPC, the library does not."""
    if name == "Client":
        from anns.client import Client

        globals()["Client"] = Client
        return Client
    raise AttributeError(f"module 'anns' has no attribute {name!r}")
