"""Write throughput: how many vectors a second does a backfill (and a plain upsert) store?

``python -m bench.backfill_speed [--n 100000] [--dim 128] [--extra 8] [--pairs 2000]
[--repeats 3] [--batch-rows 16384] [--seed 0] [--out FILE.json] [--profile FILE.html]``

1. Draws a seeded, clustered latent set of ``n`` x (``dim`` + ``extra``) vectors
   (:func:`anns.evaluation.clustered_data`). The old model sees its first ``dim`` dims through
   a little noise; the new model is an orthogonal rotation of the whole latent (so it knows
   ``extra`` informative dims the old one lacks) plus ``extra`` faint noise dims and a little
   noise: a model the compatibility gate accepts, as in ``tests/test_compat.py``.
2. Builds a collection of the old vectors (:func:`anns.build`, default config) and registers
   the new model from ``--pairs`` paired rows.
3. Repeats ``--repeats`` times, each on the ids in a fresh random order (another input, so
   the backfill starts from its first row): a backfill of every id under the new model, then
   a plain upsert of every id under the base model in batches of ``--batch-rows`` (the same
   write path, replacing each stored vector once), and, as a same-run reference for the
   machine's speed at that moment, faiss ``IndexFlatL2.add`` of the same old vectors and the
   flat search of them over the collection's centroids that routing starts with.
4. Prints vectors/s per repeat (and the process's CPU seconds, every thread's, RocksDB's
   background flushes included: steadier than wall time when other jobs share the cores) and writes the rows to ``--out`` (default
   ``bench/out/backfill_speed.json``). The machine may be shared: compare figures of one run,
   and the ratios to the faiss references rather than absolute rates across runs.

``--profile FILE.html`` profiles one extra backfill with pyinstrument (a dev tool, installed
separately) and writes its HTML report.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import anns
from anns.evaluation import clustered_data
from anns.models import BASE
from bench.run import OUT_DIR

NEW_MODEL = "v2"


def two_models(n: int, dim: int, extra: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(old float32 [n, dim], new float32 [n, dim + 2 * extra]): see the module docstring."""
    latent, _ = clustered_data(n, dim + extra, seed=seed)
    rng = np.random.default_rng(seed + 1)
    old = latent[:, :dim] + rng.standard_normal((n, dim), dtype=np.float32) * 0.05
    faint = rng.standard_normal((n, extra), dtype=np.float32) * 0.01
    q, _ = np.linalg.qr(rng.standard_normal((dim + 2 * extra,) * 2))
    new = np.hstack([latent, faint]) @ q.astype(np.float32)
    new += rng.standard_normal(new.shape, dtype=np.float32) * 0.01
    return np.ascontiguousarray(old, np.float32), np.ascontiguousarray(new, np.float32)


def _rate(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else float("inf")


def _upsert(coll: anns.Collection, x: np.ndarray, ids: np.ndarray, batch_rows: int) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(ids), batch_rows):
        coll.upsert(x[s : s + batch_rows], ids[s : s + batch_rows], model=BASE)
    return time.perf_counter() - t0


def _faiss_references(old: np.ndarray, centroids: np.ndarray, replica_cap: int) -> dict[str, float]:
    import faiss  # after anns, which sets OpenMP's wait policy before faiss loads it

    t0 = time.perf_counter()
    flat = faiss.IndexFlatL2(old.shape[1])
    flat.add(old)
    add_s = time.perf_counter() - t0
    route = faiss.IndexFlatL2(centroids.shape[1])
    route.add(np.ascontiguousarray(centroids))
    t0 = time.perf_counter()
    route.search(np.ascontiguousarray(old[:, : centroids.shape[1]]), replica_cap)
    return {"faiss_flat_add_s": add_s, "faiss_route_search_s": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    old, new = two_models(args.n, args.dim, args.extra, args.seed)
    rng = np.random.default_rng(args.seed + 2)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=_work_dir()) as tmp:
        t0 = time.perf_counter()
        anns.build(Path(tmp) / "c", old)
        build_s = time.perf_counter() - t0
        with anns.Collection.open(Path(tmp) / "c") as coll:
            pairs = rng.choice(args.n, args.pairs, replace=False)
            report = coll.add_model(NEW_MODEL, old[pairs], new[pairs])
            print(f"built {args.n} x {args.dim} in {build_s:.1f} s; {NEW_MODEL} "
                  f"({new.shape[1]} dims): {report.verdict}; {coll.info()['postings']} postings")
            view = coll._require_view()
            centroids = view.router.centroids[:, : view.d_route]
            for r in range(args.repeats):
                order = rng.permutation(args.n)
                ids = order.astype(np.int64)
                cpu = time.process_time()
                done = coll.backfill(NEW_MODEL, new[order], ids, batch_rows=args.batch_rows,
                                     progress=False)
                backfill_s, backfill_cpu = done.seconds, time.process_time() - cpu
                cpu = time.process_time()
                upsert_s = _upsert(coll, old[order], ids, args.batch_rows)
                upsert_cpu = time.process_time() - cpu
                ref = _faiss_references(old, centroids, coll.config.replica_cap)
                row = {
                    "repeat": r, "n": args.n, "dim": args.dim, "new_dim": new.shape[1],
                    "batch_rows": args.batch_rows, "load1": round(os.getloadavg()[0], 2),
                    "backfill_s": round(backfill_s, 3), "upsert_s": round(upsert_s, 3),
                    "backfill_cpu_s": round(backfill_cpu, 3), "upsert_cpu_s": round(upsert_cpu, 3),
                    "backfill_vps": _rate(args.n, backfill_s),
                    "upsert_vps": _rate(args.n, upsert_s),
                    "faiss_flat_add_vps": _rate(args.n, ref["faiss_flat_add_s"]),
                    "faiss_route_search_vps": _rate(args.n, ref["faiss_route_search_s"]),
                }
                rows.append(row)
                print(f"repeat {r}: backfill {row['backfill_vps']:>7.0f} vec/s "
                      f"({backfill_cpu:.2f} s CPU)  upsert {row['upsert_vps']:>7.0f} vec/s "
                      f"({upsert_cpu:.2f} s CPU)  | faiss flat add "
                      f"{row['faiss_flat_add_vps']:>11.0f} vec/s, route search "
                      f"{row['faiss_route_search_vps']:>9.0f} vec/s  (load {row['load1']})",
                      flush=True)
            if args.profile:
                _profile(coll, new, rng, args)
    return rows


def _profile(coll: anns.Collection, new: np.ndarray, rng: np.random.Generator,
             args: argparse.Namespace) -> None:
    from pyinstrument import Profiler  # dev tool: pip install pyinstrument

    order = rng.permutation(args.n)
    profiler = Profiler(interval=0.001)
    with profiler:
        coll.backfill(NEW_MODEL, new[order], order.astype(np.int64),
                      batch_rows=args.batch_rows, progress=False)
    args.profile.write_text(profiler.output_html())
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def _work_dir() -> Path:
    work = OUT_DIR / "work"
    work.mkdir(parents=True, exist_ok=True)
    return work


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--extra", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-rows", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "backfill_speed.json")
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args(argv)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    for key in ("backfill_vps", "upsert_vps"):
        best = max(r[key] for r in rows)
        ratio = [round(r[key] / r["faiss_route_search_vps"], 3) for r in rows]
        print(f"{key}: best {best:.0f}; / faiss route search per repeat {ratio}")


if __name__ == "__main__":
    main()
