"""The two interceptors every call passes: bearer-token auth, then serving.

Serving is the one place where errors become status codes: an AnnsError leaves as its
``grpc_status`` with its message (and its class name in the ``anns-error`` trailer, so the
Python client raises the same class the library would); anything else is INTERNAL, logged with
its traceback, and tells the caller nothing of the server's insides. It also enforces the
message-size limit with a message that names it, refuses calls whose deadline has passed,
counts and times every call (Prometheus) and logs it (structured).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import grpc

from anns.errors import AnnsError
from server.errors import DeadlineError, RequestLimitError
from server.metrics import Metrics

log = logging.getLogger(__name__)

#: Health checks answer without a token: load balancers and orchestrators probe them.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ERROR_TRAILER = "anns-error"


def _rpc_name(method: str) -> str:
    """'/anns.v1.Search/Search' -> 'Search.Search'."""
    service, _, rpc = method.rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}.{rpc}"


def _replace_behaviour(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any], bool, bool], Any]
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped (whichever of the four kinds it is)."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return handler._replace(
                **{kind: wrap(behaviour, handler.request_streaming, handler.response_streaming)}
            )
    return handler


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Every call but health checks needs ``authorization: Bearer <token>``. A wrong or
    missing token gets UNAUTHENTICATED with one fixed message, before any other check."""

    def __init__(self, token: str, metrics: Metrics) -> None:
        self._token = token.encode()
        self._metrics = metrics

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIXES):
            return handler
        given = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, credential = value.partition(" ")
                if scheme.lower() == "bearer":
                    given = credential.strip().encode()
        # compare_digest: the time taken says nothing about how much of the token matched
        if hmac.compare_digest(given, self._token):
            return handler
        rpc = _rpc_name(details.method)

        def refuse(behaviour: Callable[..., Any], streaming_in: bool, streaming_out: bool) -> Any:
            def deny(request: Any, context: grpc.ServicerContext) -> Any:
                self._metrics.requests.labels(rpc).inc()
                self._metrics.errors.labels(rpc, "UNAUTHENTICATED").inc()
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

            return deny

        return _replace_behaviour(handler, refuse)


class ServingInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Errors -> status codes, size and deadline checks, metrics and logs, for every call."""

    def __init__(self, metrics: Metrics, max_message_bytes: int) -> None:
        self._metrics = metrics
        self._max_bytes = max_message_bytes

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        rpc = _rpc_name(details.method)

        def wrap(behaviour: Callable[..., Any], streaming_in: bool, streaming_out: bool) -> Any:
            if streaming_out:
                def serve_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    call = _Call(self, rpc, context)
                    with call:
                        yield from behaviour(call.admit(request, streaming_in), context)
                return serve_stream

            def serve_unary(request: Any, context: grpc.ServicerContext) -> Any:
                call = _Call(self, rpc, context)
                with call:
                    return behaviour(call.admit(request, streaming_in), context)
            return serve_unary

        return _replace_behaviour(handler, wrap)

    def check_size(self, message: Any) -> None:
        size = message.ByteSize()
        if size > self._max_bytes:
            raise RequestLimitError(
                f"request message is {size} bytes, over this server's limit of "
                f"{self._max_bytes} bytes (max_message_bytes, see GetServerInfo); send fewer "
                f"vectors or queries per call (anns.Client splits batches by itself)"
            )


class _Call:
    """One call through the serving interceptor: admission, status mapping, figures."""

    def __init__(self, owner: ServingInterceptor, rpc: str, context: grpc.ServicerContext):
        self.owner, self.rpc, self.context = owner, rpc, context
        self.started = time.perf_counter()
        self.code = "OK"
        self.message = ""

    def admit(self, request: Any, streaming: bool) -> Any:
        """The request (or a checking iterator over a request stream), if the call may run."""
        self.check_deadline()
        if not streaming:
            self.owner.check_size(request)
            return request
        return self._checked(request)

    def _checked(self, requests: Iterator[Any]) -> Iterator[Any]:
        for message in requests:
            self.owner.check_size(message)
            yield message

    def check_deadline(self) -> None:
        remaining = self.context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineError(f"the deadline of this {self.rpc} call passed before it started")

    def __enter__(self) -> _Call:
        self.owner._metrics.requests.labels(self.rpc).inc()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: object) -> Literal[False]:
        try:
            if isinstance(error, AnnsError):
                self.code, self.message = error.grpc_status, str(error)
                self.context.set_trailing_metadata(((ERROR_TRAILER, type(error).__name__),))
                self.context.abort(getattr(grpc.StatusCode, self.code), str(error))
            elif isinstance(error, grpc.RpcError) or (
                    isinstance(error, Exception) and not self.context.is_active()):
                # the client cancelled (its request stream raises as it goes): not a fault
                self.code, self.message = "CANCELLED", "the client cancelled the call"
            elif isinstance(error, Exception):
                status = self.context.code()
                if status is not None and status != grpc.StatusCode.OK:  # aborted already
                    self.code = status.name
                    return False
                self.code, self.message = "INTERNAL", repr(error)
                log.error("%s failed", self.rpc, exc_info=(kind, error, tb))  # type: ignore[arg-type]
                self.context.abort(grpc.StatusCode.INTERNAL,
                                   f"internal error in {self.rpc}; the server log has the details")
            elif error is not None:  # GeneratorExit: the client went away mid-stream
                self.code = "CANCELLED"
            return False
        finally:
            self._record()

    def _record(self) -> None:
        seconds = time.perf_counter() - self.started
        metrics = self.owner._metrics
        metrics.latency.labels(self.rpc).observe(seconds)
        fields = {"rpc": self.rpc, "code": self.code, "ms": round(seconds * 1e3, 3),
                  "peer": self.context.peer()}
        if self.code != "OK":
            metrics.errors.labels(self.rpc, self.code).inc()
            fields["error"] = self.message
            level = logging.ERROR if self.code == "INTERNAL" else logging.WARNING
            log.log(level, "call failed", extra=fields)
        else:
            log.debug("call", extra=fields)
