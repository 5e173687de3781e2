"""Building, running and stopping a server: ``build_server`` for embedding (tests, benches),
``serve`` for ``anns serve`` (signals, logs, metrics endpoint)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from anns_proto.anns.v1 import anns_pb2 as pb
from anns_proto.anns.v1 import anns_pb2_grpc as rpc
from server.config import ServerConfig
from server.interceptors import AuthInterceptor, ServingInterceptor
from server.metrics import Metrics
from server.registry import Opener, Registry
from server.servicers import (
    CollectionsService,
    Limits,
    SearchService,
    ServerService,
    VectorsService,
)

log = logging.getLogger(__name__)

#: Full names of the anns.v1 services (what reflection lists and health reports on).
SERVICES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())


@dataclass
class RunningServer:
    """A started server: its address and ports, and how to stop it cleanly."""

    grpc_server: grpc.Server
    registry: Registry
    health: health.HealthServicer
    metrics: Metrics
    config: ServerConfig
    port: int
    metrics_port: int | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let calls in flight finish (at most
        ``grace`` seconds, default the config's), then close every collection."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        grace = self.config.grace_seconds if grace is None else grace
        self.grpc_server.stop(grace).wait()
        self.registry.close()
        self.metrics.close()
        log.info("server stopped")

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def build_server(config: ServerConfig, *, opener: Opener | None = None) -> RunningServer:
    """Start a server for ``config`` (collections open in the background; health turns
    SERVING once all are open). ``opener`` replaces Collection.open (tests delay it)."""
    metrics = Metrics()
    interceptors: list[grpc.ServerInterceptor] = []
    if config.token is not None:
        interceptors.append(AuthInterceptor(config.token, metrics))
    interceptors.append(ServingInterceptor(metrics, config.max_message_bytes))
    # the transport admits up to twice the limit, so that a request just over it reaches the
    # serving interceptor, which answers with a message naming the limit (gRPC's own is
    # opaque); responses are kept under the limit by the servicers
    transport_limit = min(2 * config.max_message_bytes, (1 << 31) - 1)


    server = grpc.server(
        ThreadPoolExecutor(config.workers, thread_name_prefix="anns-grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", transport_limit),
            ("grpc.max_send_message_length", transport_limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    registry = Registry(config.root, config.storage, opener)
    limits = Limits(config)
    rpc.add_CollectionsServicer_to_server(CollectionsService(registry), server)
    rpc.add_VectorsServicer_to_server(VectorsService(registry, limits, metrics), server)
    rpc.add_SearchServicer_to_server(SearchService(registry, limits, metrics), server)
    rpc.add_ServerServicer_to_server(ServerService(config), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    address = f"{config.host}:{config.port}"
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    running = RunningServer(server, registry, health_servicer, metrics, config, port)
    if config.metrics_port is not None:
        running.metrics_port = metrics.serve(config.host, config.metrics_port)
    registry.start()
    server.start()

    def mark_serving() -> None:
        registry.opened.wait()
        if not running._stopped.is_set():
            for name in ("", *SERVICES):
                health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("serving", extra={"collections": len(registry.entries())})

    threading.Thread(target=mark_serving, name="anns-health", daemon=True).start()
    log.info("listening", extra={"address": running.address, "tls": config.tls_cert is not None,
                                 "auth": config.token is not None,
                                 "metrics_port": running.metrics_port})
    return running


def serve(
    config: ServerConfig, *, on_start: Callable[[RunningServer], None] | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then drain (see :meth:`RunningServer.stop`).
    ``on_start`` is called with the running server once it listens."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: draining", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        running = build_server(config)
        if on_start is not None:
            on_start(running)
        while not stop.wait(0.5):
            pass
        running.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
