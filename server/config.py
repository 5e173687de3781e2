"""The server's configuration: one frozen model, each knob documented with its trade-off."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anns.config import MAX_K, StorageConfig


class ServerConfig(BaseModel):
    """How ``anns serve`` runs. Limits are advertised to clients by ``GetServerInfo``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: Path
    """Directory of collections: each subdirectory is a collection named after it; new
    collections are created there."""

    host: str = "127.0.0.1"
    """Address to listen on. The default accepts local clients only; ``0.0.0.0`` or ``[::]``
    every interface (then prefer ``token`` and TLS)."""

    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (reported when the server starts)."""

    max_message_bytes: int = Field(default=64 << 20, ge=4096, le=1 << 30)
    """Largest request or response. Raising it lets bigger batches travel in one call at the
    cost of that much transient memory per call in flight (clients split larger batches)."""

    max_batch: int = Field(default=65536, ge=1, le=10_000_000)
    """Most queries in one search request, or vectors in one write request."""

    max_k: int = Field(default=MAX_K, ge=1, le=MAX_K)
    """Largest k of a search (at most the library's MAX_K)."""

    workers: int = Field(default=32, ge=1, le=1024)
    """Threads serving calls. Each search or write occupies one for its duration, an Ingest
    stream for its whole life; calls beyond this wait in gRPC's queue."""

    token: str | None = Field(default=None, min_length=16, repr=False)
    """Bearer token every call must carry (``authorization: Bearer <token>`` metadata), except
    health checks. None: no authentication (then keep ``host`` local)."""

    tls_cert: Path | None = None
    """PEM certificate chain: with ``tls_key``, the server speaks TLS only."""

    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus metrics endpoint (HTTP, on ``host``); 0 picks a free one; None:
    no endpoint."""

    grace_seconds: float = Field(default=30.0, ge=0.0)
    """On SIGTERM, how long calls in flight may run before they are cancelled."""

    storage: StorageConfig = StorageConfig()
    """How every collection's RocksDB is opened (cache bound, direct reads)."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.storage.read_only:
            raise ValueError("the server writes to its collections: storage.read_only must be off")
        return self
