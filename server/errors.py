"""Errors only the server raises, in the library's tree (each names its gRPC status)::

    AnnsError
    ├── LimitExceededError
    │   └── RequestLimitError          RESOURCE_EXHAUSTED   over a limit GetServerInfo names
    ├── CollectionOpeningError         UNAVAILABLE          the collection is still opening
    └── DeadlineError                  DEADLINE_EXCEEDED    the call's deadline passed first

Every other error reaching the wire is the library's own (``anns.errors``).
"""

from __future__ import annotations

from anns.errors import AnnsError, LimitExceededError


class RequestLimitError(LimitExceededError):
    """A request (or the response it asks for) is beyond a limit of this server: message
    bytes, batch rows or k. The message names the limit."""

    grpc_status = "RESOURCE_EXHAUSTED"


class CollectionOpeningError(AnnsError):
    """The collection is being opened (server start); retry shortly."""

    grpc_status = "UNAVAILABLE"


class DeadlineError(AnnsError, TimeoutError):
    """The call's deadline passed before the server started (the next part of) its work."""

    grpc_status = "DEADLINE_EXCEEDED"
