"""The ``anns`` command: parses flags and calls the library; prints JSON on stdout.

Errors the library raises on purpose become one line on stderr and exit status 1 (2 for bad
usage, as argparse does).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from anns.bulk import build
from anns.config import SearchParams, StorageConfig, validated
from anns.errors import AnnsError, InputFormatError
from anns.evaluation import recall_at
from anns.formats import open_matrix
from anns.index import Collection


def _storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--block-cache-mb", type=float, default=None,
                        help="RocksDB block cache bound in MiB (default 4)")
    parser.add_argument("--direct-reads", action="store_true",
                        help="read with O_DIRECT so RSS is the whole memory cost")


def _storage_config(args: argparse.Namespace, *, read_only: bool = False) -> StorageConfig:
    fields: dict[str, Any] = {"direct_reads": args.direct_reads, "read_only": read_only}
    if args.block_cache_mb is not None:
        fields["block_cache_bytes"] = int(args.block_cache_mb * (1 << 20))
    return validated(StorageConfig, **fields)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anns", description="memory-disk hybrid vector search")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="bulk-build a collection from .npy or .fvecs")
    p.add_argument("dir", type=Path)
    p.add_argument("--vectors", required=True, type=Path)
    p.add_argument("--ids", type=Path, help=".npy of int64 ids (default: row numbers)")
    p.add_argument("--metric", choices=["l2", "ip", "cosine"])
    p.add_argument("--config", type=Path, help="JSON file of IndexConfig fields")
    p.add_argument("--no-progress", action="store_true")
    _storage_args(p)

    p = sub.add_parser("search", help="batch search a collection")
    p.add_argument("dir", type=Path)
    p.add_argument("--queries", required=True, type=Path)
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

    p = sub.add_parser("tune", help="choose and store the search profile for a recall target")
    p.add_argument("dir", type=Path)
    p.add_argument("--recall", required=True, type=float, help="target recall@k, e.g. 0.95")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--queries", type=int, default=300,
                   help="held-out queries sampled from the collection (default 300)")
    p.add_argument("--objective", choices=["batch", "single"], default="batch",
                   help="maximise batch throughput or single-query rate (default batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="measure and print; store nothing")

    p = sub.add_parser("info", help="a collection's config and figures as JSON")
    p.add_argument("dir", type=Path)

    p = sub.add_parser("bench", help="benchmark against faiss (and DiskANN) on a dataset dir")
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="scratch directory for indexes")
    p.add_argument("--diskann", action="store_true",
                   help="also run DiskANN (creates its own venv on first use; minutes)")
    p.add_argument("--quick", action="store_true", help="fewer sweep points")
    p.add_argument("--systems", default=None, help="comma-separated subset of systems")
    return parser


def _cmd_build(args: argparse.Namespace) -> None:
    config: dict[str, Any] = {}
    if args.config:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, ValueError) as e:
            raise InputFormatError(f"{args.config}: not a JSON config file ({e})") from e
        if not isinstance(config, dict):
            raise InputFormatError(
                f"{args.config}: a config must be a JSON object of IndexConfig fields, "
                f"got {type(config).__name__}"
            )
    if args.metric:
        config["metric"] = args.metric
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
    with Collection.open(args.dir, _storage_config(args, read_only=True)) as coll:
        t0 = time.perf_counter()
        # knobs override the collection's tuned default profile, if it has one
        result = coll.search(queries, args.k, return_stats=True, **knobs)
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


def _cmd_tune(args: argparse.Namespace) -> None:
    storage = StorageConfig(read_only=args.dry_run)
    with Collection.open(args.dir, storage) as coll:
        report = coll.tune(
            args.recall, k=args.k, queries=args.queries, objective=args.objective,
            seed=args.seed, store=not args.dry_run,
        )
    # the curve, for people, on stderr; the profile, for programs, on stdout
    print(f"{'max_postings':>12} {'eps2':>5} {'refine':>6} {'d_route':>7} {'d_rerank':>8} "
          f"{'recall':>7} {'qps':>9}", file=sys.stderr)
    for point in report.curve:
        p = point.params
        print(f"{p['max_postings']:>12} {p['eps2']:>5} {p['refine_factor']:>6} "
              f"{p.get('d_route', '-'):>7} {p.get('d_rerank', '-'):>8} {point.recall:>7.4f} "
              f"{point.qps:>9.0f}", file=sys.stderr)
    out = report.to_dict()
    out["stored"] = not args.dry_run
    print(json.dumps(out["profile"] | {"stored": out["stored"], "points": len(report.curve),
                                        "seconds": out["seconds"]}))


def _cmd_info(args: argparse.Namespace) -> None:
    with Collection.open(args.dir, StorageConfig(read_only=True)) as coll:
        print(json.dumps(coll.info(), indent=2))


def _cmd_bench(args: argparse.Namespace) -> None:
    from bench.run import run_bench  # the benchmark harness ships beside the library

    run_bench(
        args.dataset, out=args.out, work=args.work, diskann=args.diskann, quick=args.quick,
        systems=args.systems.split(",") if args.systems else None,
    )


_COMMANDS = {
    "build": _cmd_build, "search": _cmd_search, "tune": _cmd_tune, "info": _cmd_info,
    "bench": _cmd_bench,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
