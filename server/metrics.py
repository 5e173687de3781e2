"""Prometheus metrics of one server, in a registry of its own (several servers may share a
process, as in the tests), served over HTTP on a port of their own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from anns.search import SearchStats

#: Seconds: from sub-millisecond single queries to large batches.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_POSTING_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_BYTES_BUCKETS = tuple(float(1 << s) for s in range(10, 28, 2))  # 1 KiB .. 128 MiB


class Metrics:
    """Requests, errors by status code and latency per RPC; read figures per query."""

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
        self.postings_probed = BatchHistogram(
            "anns_search_postings_probed", "Postings probed per query, one sample per query.",
            _POSTING_BUCKETS, r)
        self.bytes_read = BatchHistogram(
            "anns_search_bytes_read", "Bytes read from storage per query, one sample per query "
            "(a posting or vector several queries of a call read once counts for each).",
            _BYTES_BUCKETS, r)
        self.written = Counter("anns_vectors_written", "Vectors durably written.", registry=r)
        self._http: Any = None

    def observe_search(self, stats: SearchStats) -> None:
        self.queries.inc(stats.queries)
        self.postings_probed.observe(stats.per_query.postings_probed)
        self.bytes_read.observe(stats.per_query.bytes_read)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns its port."""
        self._http, _ = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class BatchHistogram:
    """A Prometheus histogram observed a whole array at a time: one bucket count in numpy per
    call, where ``Histogram.observe`` would be a Python call (and a lock) per query."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.array([*buckets, np.inf])
        # the "le" labels exactly as prometheus_client's own Histogram writes them
        go_float: Callable[[float], str] = floatToGoString
        self._labels = [go_float(b) for b in self._bounds]
        self._counts = np.zeros(len(self._bounds), dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, values: np.ndarray) -> None:
        """Add one sample per value."""
        # bucket i counts the values v with bounds[i-1] < v <= bounds[i] (Prometheus' "le")
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"),
                             minlength=len(self._bounds))
        total = float(np.sum(values))
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        yield HistogramMetricFamily(
            self.name, self.documentation, sum_value=total,
            buckets=[(le, int(c)) for le, c in zip(self._labels, cumulative)])
