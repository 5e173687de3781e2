"""Exact search, recall, and synthetic datasets: the oracle shared by tests and the benchmark.

``python -m anns.evaluation OUT_DIR --n N --dim D --queries Q`` writes a dataset directory in
the DESIGN.md format (base.npy, query.npy, gt.npy, meta.json) of clustered random data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import faiss
import numpy as np

from anns.config import Metric


def exact_knn(
    base: np.ndarray, queries: np.ndarray, k: int, metric: Metric = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest neighbours: (ids int64 [q, k], distances float32 [q, k]).

    l2: squared distances ascending; ip/cosine: similarities descending (cosine normalises
    both sides). Computed by faiss flat search over the whole base.
    """
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    index = faiss.IndexFlatL2(base.shape[1]) if metric == "l2" else faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    distances, ids = index.search(queries, min(k, len(base)))
    return ids, distances


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """recall@k: mean over queries of |found[:, :k] ∩ truth[:, :k]| / k."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def clustered_data(
    n: int, dim: int, *, clusters: int = 0, queries: int = 0, spread: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random centres: (base float32 [n, dim], queries [queries, dim]).

    Hard enough to index (clusters overlap at ``spread`` ~0.25 and have unequal sizes) yet
    deterministic for a seed. Queries are drawn from the same mixture.
    """
    rng = np.random.default_rng(seed)
    clusters = clusters or max(2, int(np.sqrt(n) / 2))
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    weights = rng.dirichlet(np.full(clusters, 2.0))

    def draw(m: int) -> np.ndarray:
        which = rng.choice(clusters, m, p=weights)
        noise = rng.standard_normal((m, dim)).astype(np.float32) * spread
        scale = rng.uniform(0.5, 1.5, (m, 1)).astype(np.float32)
        return np.ascontiguousarray(centres[which] + noise * scale, dtype=np.float32)

    return draw(n), draw(queries)


def write_dataset(
    out: Path, base: np.ndarray, queries: np.ndarray, metric: Metric = "l2", **meta: object
) -> None:
    """Write a DESIGN.md dataset directory: base.npy, query.npy, gt.npy (int32 [q, 100])."""
    out.mkdir(parents=True, exist_ok=True)
    ids, _ = exact_knn(base, queries, min(100, len(base)), metric)
    np.save(out / "base.npy", base.astype(np.float32))
    np.save(out / "query.npy", queries.astype(np.float32))
    np.save(out / "gt.npy", ids.astype(np.int32))
    (out / "meta.json").write_text(json.dumps({"metric": metric, **meta}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write a clustered synthetic dataset")
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--metric", choices=["l2", "ip", "cosine"], default="l2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    base, queries = clustered_data(args.n, args.dim, queries=args.queries, seed=args.seed)
    write_dataset(
        args.out, base, queries, args.metric, name="synthetic-clustered", seed=args.seed,
        source="anns.evaluation.clustered_data",
    )


if __name__ == "__main__":
    main()
