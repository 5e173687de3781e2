"""Single-query speed of anns: one query per search call, per-stage time, recall@10.

    python bench/single_query.py DATA COLLECTION [--engine LABEL=PATH ...] [--queries 1000] \\
        [--passes 3] [--block 50] [--max-postings 8] [--refine-factor 3] [--eps2 E] \\
        [--io-threads N] [--batch]

``DATA``: a dataset directory (``query.npy``, ``gt.npy``, ``meta.json``); ``COLLECTION``: an anns
collection built from its base (e.g. the ``adaptive`` variant of :mod:`bench.variants`:
``{"codec": "opq", "pq_m": 64, "d_scan": 128, "d_route": 64}``). Each engine opens the collection
as the benchmark serves it (:mod:`bench.anns_peer`): read-only, O_DIRECT reads, the library's
default block cache (2 MiB: cold-ish; it holds index and filter blocks and some postings), and
warms up as :func:`bench.harness.measure` does (one batch call and as many single calls on the
first 100 queries).

The machine is shared and its load moves within seconds, so engines are compared in one run,
interleaved: each ``--engine LABEL=PATH`` is a server subprocess importing ``anns`` from PATH
(empty: the installed one; e.g. an ``git archive`` of an older commit for the before), and the
passes over the first ``--queries`` queries go in blocks of ``--block`` queries, engine after
engine, the order alternating. Without ``--engine`` the installed anns runs alone. One JSON
line per engine and pass: QPS, p50/p99 latency, recall@10, mean milliseconds per query in each
stage (``SearchStats.seconds``: route, fetch, scan, rerank; ``python``: the rest of the call)
and device reads per query (``/proc/self/io``: bytes and read calls). ``--batch`` first times
a batch call over the same queries (best of four, the engines taking turns): a single-query
change must not cost the batch path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("route", "fetch", "scan", "rerank")
BATCH_REPEATS = 4


class Engine:
    """One anns, opened on the collection, running blocks of single queries on request."""

    def __init__(self, args: argparse.Namespace) -> None:
        import faiss

        import anns
        from anns.config import SearchParams, validated
        from bench import harness

        self.harness = harness
        faiss.omp_set_num_threads(args.threads)
        ds = harness.load_dataset(args.data)
        self.queries, self.gt = ds.queries[: args.queries], ds.gt[: args.queries]
        knobs: dict[str, Any] = {"max_postings": args.max_postings,
                                 "refine_factor": args.refine_factor}
        if args.eps2 is not None:
            knobs["eps2"] = args.eps2
        self.knobs = knobs
        self.params = validated(SearchParams, **knobs)
        storage = anns.StorageConfig(direct_reads=True, block_cache_bytes=args.block_cache_bytes,
                                     io_threads=args.io_threads, read_only=True)
        self.coll = anns.Collection.open(args.collection, storage)
        self.path = str(Path(anns.__file__).parent)
        self.overhead = harness.io_overhead()
        warm = min(100, len(self.queries))
        self.coll.search(self.queries[:warm], 10, self.params)
        for i in range(warm):
            self.coll.search(self.queries[i : i + 1], 10, self.params)

    def batch(self) -> dict[str, Any]:
        """One batch call over the queries: its seconds and recall@10."""
        t0 = time.perf_counter()
        result = self.coll.search(self.queries, 10, self.params)
        return {"seconds": time.perf_counter() - t0,
                "recall": self.harness.recall_at(result.ids, self.gt, 10)}

    def run(self, start: int, stop: int) -> dict[str, Any]:
        """Queries [start, stop), one per call: latencies, ids, stage seconds, reads."""
        lat, found = [], []
        seconds = dict.fromkeys(STAGES, 0.0)
        read0, calls0 = self.harness.io_counters()
        for i in range(start, stop):
            t0 = time.perf_counter()
            result = self.coll.search(self.queries[i : i + 1], 10, self.params,
                                      return_stats=True)
            lat.append(time.perf_counter() - t0)
            found.append(result.ids[0, :10].tolist())
            for name in STAGES:
                seconds[name] += result.stats.seconds.get(name, 0.0)
        read1, calls1 = self.harness.io_counters()
        return {"lat": lat, "ids": found, "seconds": seconds, "read": read1 - read0,
                "calls": max(0, calls1 - calls0 - self.overhead)}


def summary(engine: str, parts: list[dict[str, Any]], gt: np.ndarray) -> dict[str, Any]:
    """The figures of one pass from its blocks."""
    from bench import harness

    lat = np.array([t for p in parts for t in p["lat"]])
    ids = np.array([row for p in parts for row in p["ids"]])
    n, total = len(lat), float(lat.sum())
    seconds = {name: sum(p["seconds"][name] for p in parts) for name in STAGES}
    ms = {name: round(s / n * 1e3, 4) for name, s in seconds.items()}
    ms["python"] = round((total - sum(seconds.values())) / n * 1e3, 4)
    return {
        "label": engine,
        "qps_single": round(n / total, 1),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
        "recall@10": round(harness.recall_at(ids, gt[:n], 10), 4),
        "ms_per_query": ms,
        "bytes_read_per_query": round(sum(p["read"] for p in parts) / n),
        "read_calls_per_query": round(sum(p["calls"] for p in parts) / n, 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def serve(args: argparse.Namespace) -> None:
    """Child process: JSON commands on stdin, JSON answers on stdout."""
    engine = Engine(args)
    print(json.dumps({"path": engine.path, "knobs": engine.knobs}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "batch":
            answer = engine.batch()
        else:
            answer = engine.run(command["start"], command["stop"])
        print(json.dumps(answer), flush=True)


class Child:
    """An engine in a subprocess importing anns from ``path`` ("" = the installed one)."""

    def __init__(self, label: str, path: str, argv: list[str]) -> None:
        env = dict(os.environ)
        if path:
            env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *argv, "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env, cwd="/",
        )
        self.hello = self.ask(None)

    def ask(self, command: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"engine {self.label} exited ({self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def compare(args: argparse.Namespace, argv: list[str]) -> None:
    """Interleave the engines' passes block by block; one JSON line per engine and pass."""
    from bench import harness

    gt = harness.load_dataset(args.data).gt[: args.queries]
    specs = args.engine or ["anns="]
    children = [Child(*spec.split("=", 1), argv) for spec in specs]
    try:
        heads = {c.label: {"engine": c.hello["path"], "params": c.hello["knobs"],
                           "io_threads": args.io_threads, "queries": len(gt)}
                 for c in children}
        if args.batch:  # best of BATCH_REPEATS calls each, the engines taking turns
            for r in range(BATCH_REPEATS):
                for c in children if r % 2 == 0 else children[::-1]:
                    answer = c.ask({"op": "batch"})
                    best = heads[c.label].get("qps_batch", 0.0)
                    qps = round(len(gt) / answer["seconds"], 1)
                    heads[c.label].update(qps_batch=max(best, qps),
                                          **{"recall@10_batch": round(answer["recall"], 4)})
        n = len(gt)
        for p in range(args.passes):
            parts: dict[str, list[dict[str, Any]]] = {c.label: [] for c in children}
            for b, start in enumerate(range(0, n, args.block)):
                order = children if (b + p) % 2 == 0 else children[::-1]
                for c in order:
                    stop = min(n, start + args.block)
                    parts[c.label].append(c.ask({"op": "run", "start": start, "stop": stop}))
            for c in children:
                row = {**summary(c.label, parts[c.label], gt), **heads[c.label], "pass": p}
                sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    finally:
        for c in children:
            c.close()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("collection", type=Path)
    parser.add_argument("--engine", action="append",
                        help="LABEL=PATH: an engine importing anns from PATH (repeatable)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--block", type=int, default=50, help="queries per interleaved block")
    parser.add_argument("--max-postings", type=int, default=8)
    parser.add_argument("--refine-factor", type=float, default=3.0)
    parser.add_argument("--eps2", type=float, default=None)
    parser.add_argument("--block-cache-bytes", type=int, default=4 << 20)
    parser.add_argument("--io-threads", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads of faiss")
    parser.add_argument("--batch", action="store_true", help="also time batch calls")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data, args.collection = args.data.resolve(), args.collection.resolve()
    if args.serve:
        serve(args)
        return
    child_argv = [str(args.data), str(args.collection)]
    for name in ("queries", "max_postings", "refine_factor", "eps2", "block_cache_bytes",
                 "io_threads", "threads"):
        value = getattr(args, name)
        if value is not None:
            child_argv += ["--" + name.replace("_", "-"), str(value)]
    compare(args, child_argv)


if __name__ == "__main__":
    main()
