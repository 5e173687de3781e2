"""The one exception hierarchy of anns.

Every error the library raises on purpose is an :class:`AnnsError`. Each class also subclasses
the builtin a Python caller would reach for (``except ValueError`` still works) and names the
gRPC status code the server maps it to::

    AnnsError
    ├── InvalidArgumentError (ValueError)        INVALID_ARGUMENT
    │   ├── DimensionMismatchError               wrong vector or query dim
    │   ├── NonFiniteError                       NaN or Inf in a vector
    │   ├── DTypeError (also TypeError)          not a float array / not integer ids
    │   ├── DuplicateIdsError                    the same id twice in one batch
    │   ├── LimitExceededError                   k or a batch beyond a documented limit
    │   ├── InputFormatError                     a file that is not what its extension says
    │   └── IncompatibleModelError               a model version the quality gate refuses
    ├── NotFoundError (KeyError)                 NOT_FOUND
    │   └── CollectionNotFoundError              no collection at that path
    ├── AlreadyExistsError                       ALREADY_EXISTS
    │   ├── IdExistsError                        add() of an id that is stored
    │   └── CollectionExistsError                create() over an existing collection
    ├── FailedPreconditionError                  FAILED_PRECONDITION
    │   ├── EmptyCollectionError                 search before any vector was stored
    │   └── CollectionClosedError                use after close()
    └── CorruptCollectionError (OSError)         DATA_LOSS
        ├── FormatVersionError                   written by another on-disk format version
        └── IncompleteBuildError                 a bulk build that did not finish
"""

from __future__ import annotations


class AnnsError(Exception):
    """Base class of every error anns raises on purpose."""

    grpc_status: str = "UNKNOWN"


class InvalidArgumentError(AnnsError, ValueError):
    """The caller passed something anns cannot accept; nothing was changed."""

    grpc_status = "INVALID_ARGUMENT"


class DimensionMismatchError(InvalidArgumentError):
    """A vector or query has a different dimension from the collection."""


class NonFiniteError(InvalidArgumentError):
    """A vector holds NaN or +/-Inf."""


class DTypeError(InvalidArgumentError, TypeError):
    """An array has a dtype anns does not accept (e.g. strings, complex, float ids)."""


class DuplicateIdsError(InvalidArgumentError):
    """The same id appears more than once in one batch."""


class LimitExceededError(InvalidArgumentError):
    """A parameter (k, batch size, ...) is outside its documented range."""


class InputFormatError(InvalidArgumentError):
    """An input file is not what its extension says (not .npy, truncated .fvecs, ...)."""


class IncompatibleModelError(InvalidArgumentError):
    """A new model version whose fit the compatibility gate refuses (the message carries the
    reasons and the figures; ``force`` registers it anyway)."""


class NotFoundError(AnnsError, KeyError):
    """Something named by the caller does not exist."""

    grpc_status = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CollectionNotFoundError(NotFoundError):
    """There is no collection at the given path."""


class AlreadyExistsError(AnnsError):
    """Something the caller wants to create already exists."""

    grpc_status = "ALREADY_EXISTS"


class IdExistsError(AlreadyExistsError):
    """``add`` was given ids that are already stored (use ``upsert`` to replace them)."""


class CollectionExistsError(AlreadyExistsError):
    """``create`` was pointed at a directory that already holds a collection."""


class FailedPreconditionError(AnnsError, RuntimeError):
    """The request is well formed but the collection is not in a state to serve it."""

    grpc_status = "FAILED_PRECONDITION"


class EmptyCollectionError(FailedPreconditionError):
    """The collection has no routing yet: nothing was ever built or added."""


class CollectionClosedError(FailedPreconditionError):
    """The collection was closed."""


class CorruptCollectionError(AnnsError, OSError):
    """The collection directory exists but cannot be read as a consistent collection."""

    grpc_status = "DATA_LOSS"


class FormatVersionError(CorruptCollectionError):
    """The collection was written by an on-disk format version this anns cannot read."""


class IncompleteBuildError(CorruptCollectionError):
    """A bulk build was interrupted before it finished; the message says how to recover."""
