"""anns: a memory-disk hybrid vector search engine.

Centroids of a balanced clustering live in RAM; posting lists live in RocksDB; each search
probes few postings, scans their codes posting-major in faiss, and reranks exactly::

    import anns
    anns.build("my.coll", vectors)                  # bulk build, or Collection.create + add
    with anns.Collection.open("my.coll") as coll:
        result = coll.search(queries, k=10)          # result.ids, result.distances
"""

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
    IncompleteBuildError,
    InputFormatError,
    InvalidArgumentError,
    LimitExceededError,
    NonFiniteError,
    NotFoundError,
)
from anns.index import Collection
from anns.search import SearchResult, SearchStats

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
    "CollectionNotFoundError",
    "CorruptCollectionError",
    "DTypeError",
    "DimensionMismatchError",
    "DuplicateIdsError",
    "EmptyCollectionError",
    "FailedPreconditionError",
    "FormatVersionError",
    "IdExistsError",
    "IncompleteBuildError",
    "IndexConfig",
    "InputFormatError",
    "InvalidArgumentError",
    "LimitExceededError",
    "NonFiniteError",
    "NotFoundError",
    "SearchParams",
    "SearchResult",
    "SearchStats",
    "StorageConfig",
    "build",
    "__version__",
]
