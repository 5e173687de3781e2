"""gRPC load run: the same queries through the embedded library and through ``anns serve``.

::

    python -m bench.grpc_load DATASET_DIR [--clients 8] [--seconds 10] [--batch 100]
                              [--work DIR] [--out FILE.json] [--config JSON] [--k 10]

The dataset directory is the DESIGN.md format (base.npy, query.npy, gt.npy, meta.json). The
collection is bulk-built once into ``--work`` (reused when present). Then, for the same
queries, each for ``--seconds`` (closed loop: a caller sends its next call when the last one
returns, cycling through the queries in batches of ``--batch``):

1. ``anns-embedded``, 1 caller: ``Collection.search`` in this process;
2. ``anns-grpc``, 1 client: ``anns serve`` in its own process, one ``anns.Client``;
3. ``anns-embedded``, N callers: N threads of this process (the library releases the GIL in
   faiss and RocksDB);
4. ``anns-grpc``, N clients: N client processes over loopback.

The four phases run ``--repeats`` times in that order (so that a burst of load from elsewhere
hits both systems alike) after a warm-up pass; each configuration keeps its best repeat.

Each prints one JSON row (stdout): ``system``, ``params`` (batch, clients, seconds, k),
``qps_batch`` (queries per second, all callers together), ``p50_ms`` / ``p99_ms`` (per call),
``calls``, ``errors``, ``recall@10`` (first pass over the queries, against gt.npy). A last row,
``system: "ratio"``, holds grpc/embedded QPS and the N-client p99/p50. Timing claims are
ratios taken in one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import anns
from anns.evaluation import recall_at

WARMUP_SECONDS = 1.0


def _loop(search: Any, queries: np.ndarray, batch: int, seconds: float, start_at: float,
          offset: int) -> dict[str, Any]:
    """Closed-loop calls until ``seconds`` after ``start_at``: latencies and errors."""
    while time.time() < start_at:
        time.sleep(0.001)
    latencies, errors, queries_done = [], 0, 0
    end = time.perf_counter() + seconds
    i = offset * batch
    while time.perf_counter() < end:
        start = i % len(queries)
        part = queries[start:start + batch]
        t0 = time.perf_counter()
        try:
            search(part)
        except Exception as e:  # counted, and the first few reported
            errors += 1
            if errors <= 3:
                print(f"call failed: {e!r}", file=sys.stderr)
        else:
            queries_done += len(part)
        latencies.append(time.perf_counter() - t0)
        i += batch
    return {"latencies": latencies, "errors": errors, "queries": queries_done}


def _row(system: str, results: list[dict[str, Any]], params: dict[str, Any], seconds: float,
         recall: float) -> dict[str, Any]:
    latencies = np.concatenate([np.asarray(r["latencies"]) for r in results]) * 1e3
    done = sum(r["queries"] for r in results)
    return {
        "system": system, "params": params,
        "qps_batch": round(done / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3) if len(latencies) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 3) if len(latencies) else None,
        "calls": len(latencies), "errors": int(sum(r["errors"] for r in results)),
        "recall@10": round(recall, 4),
    }


def _client_worker(address: str, name: str, queries: np.ndarray, k: int, batch: int,
                   seconds: float, start_at: float, offset: int, out: Any) -> None:
    with anns.Client(address, timeout=120.0) as client:
        coll = client.collection(name)
        coll.search(queries[:batch], k)  # connect and warm up before the clock starts
        out.put(_loop(lambda q: coll.search(q, k), queries, batch, seconds, start_at, offset))


def run_embedded(path: Path, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace,
                 callers: int) -> dict[str, Any]:
    with anns.Collection.open(path, anns.StorageConfig(read_only=True)) as coll:
        recall = recall_at(coll.search(queries, args.k).ids, truth, 10)  # also warms up
        _loop(lambda q: coll.search(q, args.k), queries, args.batch, WARMUP_SECONDS, 0, 0)
        results: list[dict[str, Any]] = []
        start_at = time.time() + 0.2
        threads = [threading.Thread(target=lambda o=o: results.append(_loop(
            lambda q: coll.search(q, args.k), queries, args.batch, args.seconds, start_at, o)))
            for o in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    params = {"batch": args.batch, "clients": callers, "seconds": args.seconds, "k": args.k}
    return _row("anns-embedded", results, params, args.seconds, recall)


def run_grpc(address: str, name: str, queries: np.ndarray, truth: np.ndarray,
             args: argparse.Namespace, clients: int) -> dict[str, Any]:
    with anns.Client(address) as client:
        coll = client.collection(name)
        recall = recall_at(coll.search(queries, args.k).ids, truth, 10)  # also warms up
        _loop(lambda q: coll.search(q, args.k), queries, args.batch, WARMUP_SECONDS, 0, 0)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 5.0  # spawned interpreters import numpy, grpc and anns first
    procs = [ctx.Process(target=_client_worker, args=(
        address, name, queries, args.k, args.batch, args.seconds, start_at, o, out))
        for o in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=args.seconds + 300) for _ in procs]
    for p in procs:
        p.join(60)
    params = {"batch": args.batch, "clients": clients, "seconds": args.seconds, "k": args.k}
    return _row("anns-grpc", results, params, args.seconds, recall)


def start_server(root: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "anns.cli", "serve", str(root), "--port", "0",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("anns serve exited before it listened")
    address = f"127.0.0.1:{json.loads(line)['port']}"
    with anns.Client(address, retries=50) as client:  # waits while the collection opens
        client.list_collections()
        deadline = time.monotonic() + 300
        while any(c["state"] == "opening" for c in client.list_collections()):
            if time.monotonic() > deadline:
                raise RuntimeError("the collection did not open within 300 s")
            time.sleep(0.1)
    return proc, address


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="gRPC vs embedded load run")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100, help="queries per call")
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--work", type=Path, help="where the collection is built (reused)")
    parser.add_argument("--config", default="{}", help="JSON object of IndexConfig fields")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the four phases")
    parser.add_argument("--out", type=Path, help="also write the rows here (JSON list)")
    args = parser.parse_args(argv)

    meta = json.loads((args.dataset / "meta.json").read_text())
    queries = np.load(args.dataset / "query.npy").astype(np.float32)
    truth = np.load(args.dataset / "gt.npy")
    work = args.work or Path(tempfile.mkdtemp(prefix="anns-grpc-load-"))
    name = "bench"
    root = work / "root"
    if not (root / name).exists():
        config = {"metric": meta.get("metric", "l2"), **json.loads(args.config)}
        summary = anns.build(root / name, args.dataset / "base.npy", config=config)
        print(f"built {summary.n} vectors in {summary.build_seconds:.1f} s", file=sys.stderr)

    proc, address = start_server(root)
    best: list[dict[str, Any]] = []
    grpc_errors = 0
    try:
        for _ in range(max(1, args.repeats)):
            runs = [run_embedded(root / name, queries, truth, args, 1),
                    run_grpc(address, name, queries, truth, args, 1),
                    run_embedded(root / name, queries, truth, args, args.clients),
                    run_grpc(address, name, queries, truth, args, args.clients)]
            grpc_errors += runs[1]["errors"] + runs[3]["errors"]
            for run in runs:
                print(json.dumps({"repeat": run}), file=sys.stderr)
            best = runs if not best else [
                max(a, b, key=lambda r: r["qps_batch"]) for a, b in zip(best, runs)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        if proc.stdout is not None:
            proc.stdout.close()
    embedded_1, grpc_1, embedded_n, grpc_n = best
    rows = [embedded_1, embedded_n, grpc_1, grpc_n]
    rows.append({
        "system": "ratio",
        "params": {"batch": args.batch, "clients": args.clients},
        "grpc_vs_embedded_qps_1": round(grpc_1["qps_batch"] / embedded_1["qps_batch"], 3),
        "grpc_vs_embedded_qps_n": round(grpc_n["qps_batch"] / embedded_n["qps_batch"], 3),
        "grpc_p99_over_p50_n": round(grpc_n["p99_ms"] / grpc_n["p50_ms"], 2),
        "grpc_errors": grpc_errors,  # over every repeat
    })
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
