"""The ``anns`` command: parses flags and calls the library; prints JSON on stdout.

Errors the library raises on purpose become one line on stderr and exit status 1 (2 for bad
usage, as argparse does).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from anns.bulk import build
from anns.config import IndexConfig, SearchParams, StorageConfig, validated
from anns.errors import AnnsError, InputFormatError, InvalidArgumentError
from anns.evaluation import recall_at
from anns.formats import open_matrix
from anns.index import Collection
from anns.vectors import integer_dtype


def _storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-cache-mb", type=float, default=None,
                        help="RocksDB block cache bound in MiB (default 2)")
    parser.add_argument("--direct-reads", action="store_true",
                        help="read with O_DIRECT so RSS is the whole memory cost")


def _storage_config(args: argparse.Namespace, *, read_only: bool = False) -> StorageConfig:
    fields: dict[str, Any] = {"direct_reads": args.direct_reads, "read_only": read_only}
    if args.block_cache_mb is not None:
        fields["block_cache_bytes"] = int(args.block_cache_mb * (1 << 20))
    return validated(StorageConfig, **fields)


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="use the collection NAME on this anns server instead of a directory")
    parser.add_argument("--token-file", type=Path,
                        help="file holding the server's bearer token (or set ANNS_TOKEN)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    parser.add_argument("--tls-ca", type=Path, help="PEM file of the CA of the server's cert")


def _token(path: Path | None) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return os.environ.get("ANNS_TOKEN") or None


def _client(args: argparse.Namespace) -> Any:
    from anns.client import Client

    return Client(args.server, token=_token(args.token_file), tls=args.tls,
                  root_certificates=args.tls_ca)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anns", description="memory-disk hybrid vector search")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="bulk-build a collection from .npy or .fvecs")
    p.add_argument("dir", type=Path)
    p.add_argument("--vectors", required=True, type=Path)
    p.add_argument("--ids", type=Path, help=".npy of int64 ids (default: row numbers)")
    p.add_argument("--metric", choices=["l2", "ip", "cosine"])
    p.add_argument("--vector-dtype", choices=["float32", "uint8", "int8", "auto"],
                   help="how full vectors are stored: uint8/int8 keep integer data as given, "
                        "a quarter of float32's bytes; auto picks the smallest type that "
                        "holds every value exactly (default float32)")
    p.add_argument("--config", type=Path, help="JSON file of IndexConfig fields")
    p.add_argument("--no-progress", action="store_true")
    _storage_args(p)

    p = sub.add_parser("search", help="batch search a collection (local, or with --server)")
    p.add_argument("dir", type=Path, metavar="DIR|NAME")
    p.add_argument("--queries", required=True, type=Path)
    p.add_argument("--model", help="model version that embedded the queries (default: current)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--out", type=Path, help="write int64 [q, k] ids here (.npy)")
    p.add_argument("--truth", type=Path, help="gt.npy: also report recall@k")
    p.add_argument("--max-postings", type=int)
    p.add_argument("--eps2", type=float)
    p.add_argument("--refine-factor", type=float)
    p.add_argument("--fetch-budget-mb", type=float)
    p.add_argument("--d-route", type=int, help="route on this many dims (<= the built d_route)")
    p.add_argument("--d-rerank", type=int, help="rerank on this many dims")
    p.add_argument("--target-recall", type=float,
                   help="use the profile `anns tune` stored for this recall target")
    _storage_args(p)
    _client_args(p)

    p = sub.add_parser("tune", help="choose and store the search profile for a recall target")
    p.add_argument("dir", type=Path)
    p.add_argument("--recall", required=True, type=float, help="target recall@k, e.g. 0.95")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--queries", type=int, default=300,
                   help="tuning queries: held-out vectors sampled from the collection, or "
                        "rows sampled from --query-vectors (default 300)")
    p.add_argument("--query-vectors", type=Path, default=None, metavar="FILE",
                   help=".npy or .fvecs of queries (e.g. a sample of real traffic) to tune on "
                        "instead of stored vectors")
    p.add_argument("--model", default=None,
                   help="the model version that embedded --query-vectors (default: current)")
    p.add_argument("--objective", choices=["batch", "single"], default="batch",
                   help="maximise batch throughput or single-query rate (default batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="measure and print; store nothing")
    p.add_argument("--d-scan", default=None, metavar="D1,D2,...",
                   help="scan prefixes to try too: each re-encodes the postings at the same "
                        "code size; the collection keeps the fastest's codes")

    p = sub.add_parser("model", help="register, switch or retire embedding model versions")
    msub = p.add_subparsers(dest="model_command", required=True)
    m = msub.add_parser("add", help="register a new model version from paired embeddings")
    m.add_argument("dir", type=Path)
    m.add_argument("--name", required=True)
    m.add_argument("--old", required=True, type=Path,
                   help="pairs embedded by the current model (or --against's)")
    m.add_argument("--new", required=True, type=Path, help="the same items, new model")
    m.add_argument("--against", help="the registered version that embedded --old "
                                     "(default: the current one)")
    m.add_argument("--dry-run", action="store_true", help="fit and report; change nothing")
    m.add_argument("--force", action="store_true", help="register though the gate refuses")
    m.add_argument("--no-current", action="store_true",
                   help="register without making it the version writes and queries default to")
    m = msub.add_parser("current", help="make a model version current")
    m.add_argument("dir", type=Path)
    m.add_argument("name")
    m = msub.add_parser("retire", help="retire a model version no stored vector uses")
    m.add_argument("dir", type=Path)
    m.add_argument("name")
    m = msub.add_parser("rebase", help="rebuild routing and codes in the space of the only "
                                       "model version left (after backfill and retire)")
    m.add_argument("dir", type=Path)

    p = sub.add_parser("backfill", help="re-store items under a model version (resumable)")
    p.add_argument("dir", type=Path)
    p.add_argument("--model", required=True)
    p.add_argument("--vectors", required=True, type=Path, help=".npy or .fvecs (memory-mapped)")
    p.add_argument("--ids", required=True, type=Path, help=".npy of int64 ids")
    p.add_argument("--batch-rows", type=int, help="vectors per atomic batch (and checkpoint)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("info", help="a collection's config and figures as JSON")
    p.add_argument("dir", type=Path, metavar="DIR|NAME")
    _client_args(p)

    p = sub.add_parser("serve", help="serve the collections under DIR over gRPC")
    p.add_argument("dir", type=Path, help="each subdirectory is a collection named after it")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (default 50051)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--max-message-mb", type=float, default=64.0,
                   help="largest request or response in MiB (default 64)")
    p.add_argument("--max-batch", type=int, default=65536,
                   help="most queries or vectors in one request (default 65536)")
    p.add_argument("--workers", type=int, default=32, help="threads serving calls (default 32)")
    p.add_argument("--token-file", type=Path,
                   help="require this bearer token (file; or set ANNS_TOKEN)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS only")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds calls in flight may run after SIGTERM (default 30)")
    p.add_argument("--log-format", choices=["json", "text"], default="json")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    _storage_args(p)

    p = sub.add_parser("ingest", help="stream vectors from a file into a collection")
    p.add_argument("dir", type=Path, metavar="DIR|NAME")
    p.add_argument("--vectors", required=True, type=Path, help=".npy or .fvecs (memory-mapped)")
    p.add_argument("--ids", type=Path, help=".npy of int64 ids (default: assigned)")
    p.add_argument("--upsert", action="store_true", help="replace stored ids (needs --ids)")
    p.add_argument("--batch-rows", type=int, help="vectors per atomic batch")
    p.add_argument("--create", action="store_true",
                   help="create the collection first (dim from the file; --metric, --config)")
    p.add_argument("--metric", choices=["l2", "ip", "cosine"])
    p.add_argument("--config", type=Path, help="JSON file of IndexConfig fields (--create)")
    p.add_argument("--no-progress", action="store_true")
    _storage_args(p)
    _client_args(p)

    p = sub.add_parser("bench", help="benchmark against faiss (and DiskANN) on a dataset dir")
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="scratch directory for indexes")
    p.add_argument("--diskann", action="store_true",
                   help="also run DiskANN (creates its own venv on first use; minutes)")
    p.add_argument("--quick", action="store_true", help="fewer sweep points")
    p.add_argument("--systems", default=None, help="comma-separated subset of systems")
    p.add_argument("--adaptive", action="store_true",
                   help="anns as issue 3's variants: float32/sq8 references, rigid vs adaptive "
                        "OPQ at equal bytes, OPQ of a prefix vs the full vector at half")
    return parser


def _config_file(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputFormatError(f"{path}: not a JSON config file ({e})") from e
    if not isinstance(config, dict):
        raise InputFormatError(
            f"{path}: a config must be a JSON object of IndexConfig fields, "
            f"got {type(config).__name__}"
        )
    return config


def _cmd_build(args: argparse.Namespace) -> None:
    config: dict[str, Any] = _config_file(args.config) if args.config else {}
    if args.metric:
        config["metric"] = args.metric
    if args.vector_dtype == "auto":  # one pass over the input (its pages dropped)
        metric = config.get("metric", "l2")
        config["vector_dtype"] = (
            "float32" if metric == "cosine" else integer_dtype(open_matrix(args.vectors)))
        print(f"vector_dtype auto: {config['vector_dtype']}", file=sys.stderr)
    elif args.vector_dtype:
        config["vector_dtype"] = args.vector_dtype
    summary = build(
        args.dir, args.vectors, args.ids, config,
        storage=_storage_config(args), progress=not args.no_progress,
    )
    print(summary.to_json())


def _cmd_search(args: argparse.Namespace) -> None:
    knobs = {
        name: getattr(args, name)
        for name in ("max_postings", "eps2", "refine_factor", "fetch_budget_mb", "d_route",
                     "d_rerank", "target_recall")
        if getattr(args, name) is not None
    }
    validated(SearchParams, **knobs)  # bad knobs fail before the collection is opened
    queries = np.asarray(open_matrix(args.queries))
    if args.server:
        with _client(args) as client:
            remote = client.collection(str(args.dir))
            t0 = time.perf_counter()
            if args.model:
                knobs["model"] = args.model
            result = remote.search(queries, args.k, return_stats=True, **knobs)
            seconds = time.perf_counter() - t0
    else:
        with Collection.open(args.dir, _storage_config(args, read_only=True)) as coll:
            t0 = time.perf_counter()
            # knobs override the collection's tuned default profile, if it has one
            result = coll.search(queries, args.k, return_stats=True, model=args.model, **knobs)
            seconds = time.perf_counter() - t0
    if args.out:
        np.save(args.out, result.ids)
    stats = result.stats
    report: dict[str, Any] = {
        "queries": len(queries), "k": args.k, "seconds": round(seconds, 4),
        "qps": round(len(queries) / seconds, 1) if seconds else None,
    }
    if stats is not None:
        q = max(stats.queries, 1)
        report.update(
            postings_probed_per_query=round(stats.postings_probed / q, 2),
            bytes_read_per_query=round(stats.bytes_read / q),
            candidates_per_query=round(stats.candidates_scored / q, 1),
        )
    if args.truth:
        truth = np.asarray(open_matrix(args.truth))
        report[f"recall@{args.k}"] = round(recall_at(result.ids, truth, args.k), 4)
    print(json.dumps(report))


def to_json(obj: Any, indent: int | None = None) -> str:
    """``obj`` as JSON any reader takes: non-finite floats (an eps2 of inf: no pruning) as
    strings ("inf"), which :class:`SearchParams` reads back, not Python's bare Infinity."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(x) for k, x in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(x) for x in obj]
    return obj


def _int_list(text: str | None, flag: str) -> list[int] | None:
    """``"64,128"`` -> [64, 128]; None stays None; anything else is a named usage error."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _cmd_tune(args: argparse.Namespace) -> None:
    if args.model is not None and args.query_vectors is None:
        raise InvalidArgumentError("--model names the model that embedded --query-vectors; "
                                   "give --query-vectors FILE too")
    storage = StorageConfig(read_only=args.dry_run)
    with Collection.open(args.dir, storage) as coll:
        report = coll.tune(
            args.recall, k=args.k, queries=args.queries, objective=args.objective,
            seed=args.seed, store=not args.dry_run, d_scans=_int_list(args.d_scan, "--d-scan"),
            query_vectors=None if args.query_vectors is None else open_matrix(args.query_vectors),
            model=args.model,
        )
    # the curve, for people, on stderr; the profile, for programs, on stdout
    print(f"{'d_scan':>6} {'max_postings':>12} {'eps2':>5} {'refine':>6} {'d_route':>7} "
          f"{'d_rerank':>8} {'recall':>7} {'qps':>9}", file=sys.stderr)
    for point in report.curve:
        p = point.params
        print(f"{point.d_scan:>6} {p['max_postings']:>12} {p['eps2']:>5} {p['refine_factor']:>6} "
              f"{p.get('d_route', '-'):>7} {p.get('d_rerank', '-'):>8} {point.recall:>7.4f} "
              f"{point.qps:>9.0f}", file=sys.stderr)
    out = report.to_dict()
    out["stored"] = not args.dry_run
    print(to_json(out["profile"] | {"stored": out["stored"], "points": len(report.curve),
                                    "seconds": out["seconds"]}))


def _cmd_model(args: argparse.Namespace) -> None:
    with Collection.open(args.dir) as coll:
        if args.model_command == "add":
            report = coll.add_model(
                args.name, np.asarray(open_matrix(args.old)), np.asarray(open_matrix(args.new)),
                force=args.force, dry_run=args.dry_run, current=not args.no_current,
                against=args.against)
            print(json.dumps({"dry_run": args.dry_run, **report.to_dict()}))
            return
        if args.model_command == "rebase":
            print(json.dumps(coll.rebase().to_dict() | {"models": coll.models()}))
            return
        if args.model_command == "current":
            coll.set_current(args.name)
        else:
            coll.retire(args.name)
        print(json.dumps(coll.models()))


def _cmd_backfill(args: argparse.Namespace) -> None:
    from anns.formats import open_ids

    x, ids = open_matrix(args.vectors), open_ids(args.ids)
    with Collection.open(args.dir) as coll:
        report = coll.backfill(args.model, x, ids, batch_rows=args.batch_rows,
                               progress=False if args.no_progress else None)
        print(json.dumps({**report.to_dict(), "models": coll.models()["versions"]}))


def _cmd_info(args: argparse.Namespace) -> None:
    if args.server:
        with _client(args) as client:
            print(json.dumps(client.collection(str(args.dir)).info(), indent=2))
        return
    with Collection.open(args.dir, StorageConfig(read_only=True)) as coll:
        print(json.dumps(coll.info(), indent=2))


def _cmd_serve(args: argparse.Namespace) -> None:
    from server import ServerConfig, serve  # the server ships beside the library
    from server.logs import configure

    configure(args.log_level, args.log_format)
    config = validated(
        ServerConfig, root=args.dir, host=args.host, port=args.port,
        max_message_bytes=int(args.max_message_mb * (1 << 20)), max_batch=args.max_batch,
        workers=args.workers, token=_token(args.token_file), tls_cert=args.tls_cert,
        tls_key=args.tls_key, metrics_port=args.metrics_port, grace_seconds=args.grace,
        storage=_storage_config(args),
    )

    def started(running: Any) -> None:  # for people and scripts: where it listens
        print(json.dumps({"address": running.address, "port": running.port,
                          "metrics_port": running.metrics_port}), flush=True)

    serve(config, on_start=started)


def _cmd_ingest(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from anns.formats import open_ids

    if args.upsert and args.ids is None:
        raise InvalidArgumentError("--upsert replaces stored ids: give them with --ids")
    x = open_matrix(args.vectors)
    ids = open_ids(args.ids) if args.ids is not None else None
    config: dict[str, Any] = _config_file(args.config) if args.config else {}
    if args.metric:
        config["metric"] = args.metric
    config["dim"] = x.shape[1]
    t0 = time.perf_counter()
    if args.server:
        with _client(args) as client:
            if args.create:
                remote = client.create_collection(str(args.dir), config)
            else:
                remote = client.collection(str(args.dir))
            written = remote.ingest(x, ids, upsert=args.upsert, batch_rows=args.batch_rows,
                                    progress=not args.no_progress)
            count = remote.count()
    else:
        storage = _storage_config(args)
        if args.create:
            coll = Collection.create(args.dir, validated(IndexConfig, **config), storage)
        else:
            coll = Collection.open(args.dir, storage)
        with coll:
            rows = args.batch_rows or max(1, (8 << 20) // (4 * x.shape[1] + 8))
            parts = []
            with tqdm(total=len(x), unit="vec", disable=args.no_progress,
                      desc=f"ingest {args.dir.name}") as bar:
                for start in range(0, len(x), rows):
                    part = np.asarray(x[start:start + rows])
                    part_ids = None if ids is None else np.asarray(ids[start:start + rows])
                    if args.upsert:
                        parts.append(coll.upsert(part, part_ids))
                    else:
                        parts.append(coll.add(part, part_ids))
                    bar.update(len(part))
            written = np.concatenate(parts) if parts else np.empty(0, np.int64)
            count = coll.count()
    seconds = time.perf_counter() - t0
    print(json.dumps({"written": len(written), "count": count, "seconds": round(seconds, 3),
                      "vectors_per_second": round(len(written) / seconds, 1) if seconds else None}))


def _cmd_bench(args: argparse.Namespace) -> None:
    from bench.run import run_bench  # the benchmark harness ships beside the library

    run_bench(
        args.dataset, out=args.out, work=args.work, diskann=args.diskann, quick=args.quick,
        systems=args.systems.split(",") if args.systems else None, adaptive=args.adaptive,
    )


_COMMANDS = {
    "build": _cmd_build, "search": _cmd_search, "tune": _cmd_tune, "info": _cmd_info,
    "bench": _cmd_bench, "serve": _cmd_serve, "ingest": _cmd_ingest, "model": _cmd_model,
    "backfill": _cmd_backfill,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr,
    )
    try:
        _COMMANDS[args.command](args)
    except (AnnsError, OSError) as e:  # OSError: an output path that cannot be written
        print(f"anns: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        grpc = sys.modules.get("grpc")  # only a command that used a server imported it
        if grpc is None or not isinstance(e, grpc.RpcError):
            raise
        print(f"anns: error: server {args.server}: {e.code().name}: {e.details()}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
