"""Prometheus metrics of one server, in a registry of its own (several servers may share a
process, as in the tests), served over HTTP on a port of their own."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from anns.search import SearchStats

#: Seconds: from sub-millisecond single queries to large batches.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_POSTING_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_BYTES_BUCKETS = tuple(float(1 << s) for s in range(10, 28, 2))  # 1 KiB .. 128 MiB


class Metrics:
    """Requests, errors by status code and latency per RPC; read figures per search."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("anns_grpc_requests", "Calls received, by RPC.", ["rpc"],
                                registry=r)
        self.errors = Counter("anns_grpc_errors", "Calls that ended with a non-OK status, by "
                              "RPC and status code.", ["rpc", "code"], registry=r)
        self.latency = Histogram("anns_grpc_request_seconds", "Wall time of a call, by RPC.",
                                 ["rpc"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queries = Counter("anns_search_queries", "Queries searched.", registry=r)
        self.postings_probed = Histogram(
            "anns_search_postings_probed", "Postings probed per query, one sample per search "
            "call (the call's mean).", buckets=_POSTING_BUCKETS, registry=r)
        self.bytes_read = Histogram(
            "anns_search_bytes_read", "Bytes read from storage per search call.",
            buckets=_BYTES_BUCKETS, registry=r)
        self.written = Counter("anns_vectors_written", "Vectors durably written.", registry=r)
        self._http: Any = None

    def observe_search(self, stats: SearchStats) -> None:
        self.queries.inc(stats.queries)
        if stats.queries:
            self.postings_probed.observe(stats.postings_probed / stats.queries)
        self.bytes_read.observe(stats.bytes_read)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns its port."""
        self._http, _ = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
