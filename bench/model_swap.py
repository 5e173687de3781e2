"""Model swap: how much of a re-embedding does a transform fitted from a sample of pairs give?

``python -m bench.model_swap DATA/scifact [--sizes 500 1000 2000 4000] [--seed 0]
[--out bench/out/model_swap.json]``

DATA/scifact holds ``old_static/`` (the old model), ``minilm/`` (the new one) and ``raw/``
(BEIR qrels). For each pair-sample size, the first ``size`` documents of a seeded permutation
are the pairs; each method (``bt2``: anns.compat's fit; ``procrustes``: plain orthogonal
Procrustes; ``ridge``: an affine ridge map, the Drift-Adapter baselines) is fitted from them
by :func:`anns.compat.fit_model_transform` (which also gives the gate's verdict and its
held-out figures). Then, exact search only, over the whole corpus as old vectors:

* nDCG@10 against raw/qrels/test.tsv and recall@10 against the new model's exact neighbours,
  for old/old, new/old (new queries through the transform against old vectors), new/new raw
  and new/new through the transform (both sides mapped);
* the query-time cost of the transform (one query, and a 1,000-query batch) against the exact
  search itself over the corpus.

Writes the rows to ``--out`` and a markdown table next to it (``.md``), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from anns.compat import fit_model_transform
from anns.evaluation import exact_knn

METHODS = ("bt2", "procrustes", "ridge")
K = 10


def load(root: Path) -> dict[str, Any]:
    """Vectors of both models (float32, L2-normalised) and the qrels as {query row: {doc
    row: grade}}."""
    data: dict[str, Any] = {}
    for side, folder in (("old", "old_static"), ("new", "minilm")):
        data[f"{side}_base"] = np.load(root / folder / "base.npy")
        data[f"{side}_query"] = np.load(root / folder / "query.npy")
    doc_row = {d: i for i, d in enumerate(json.loads((root / "minilm/doc_ids.json").read_text()))}
    query_row = {
        q: j for j, q in enumerate(json.loads((root / "minilm/query_ids.json").read_text()))
    }
    qrels: dict[int, dict[int, int]] = {}
    for line in (root / "raw/qrels/test.tsv").read_text().splitlines()[1:]:
        qid, did, grade = line.split("\t")
        if qid in query_row and did in doc_row:
            qrels.setdefault(query_row[qid], {})[doc_row[did]] = int(grade)
    data["qrels"] = qrels
    return data


def ndcg_at_10(ids: np.ndarray, qrels: dict[int, dict[int, int]]) -> float:
    """Mean nDCG@10 over all queries (a query without judgements counts 0)."""
    discount = 1.0 / np.log2(np.arange(2, K + 2))
    total = 0.0
    for j, row in enumerate(ids[:, :K]):
        rel = qrels.get(j, {})
        gain = sum(rel.get(int(d), 0) * discount[i] for i, d in enumerate(row))
        ideal = sorted(rel.values(), reverse=True)[:K]
        best = sum(g * discount[i] for i, g in enumerate(ideal))
        total += gain / best if best else 0.0
    return total / len(ids)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = (found[:, :K, None] == truth[:, None, :K]).any(axis=2).sum()
    return float(hits) / truth[:, :K].size


def figures(base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            qrels: dict[int, dict[int, int]]) -> dict[str, float]:
    ids, _ = exact_knn(base, queries, K, "ip")
    return {"ndcg@10": ndcg_at_10(ids, qrels), "recall@10": recall(ids, truth)}


def transform_cost(transform: Any, base: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Seconds per query (single) and per 1,000-query batch: the transform vs exact search."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    batch = np.ascontiguousarray(np.resize(queries, (1000, queries.shape[1])), np.float32)

    def best(fn: Any, repeat: int) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    one = batch[:1]
    mapped = transform.to_old_space(batch)
    t_single = best(lambda: transform.to_old_space(one), 2000)
    s_single = best(lambda: index.search(mapped[:1], K), 300)
    t_batch = best(lambda: transform.to_old_space(batch), 20)
    s_batch = best(lambda: index.search(mapped, K), 5)
    return {
        "transform_single_us": t_single * 1e6, "search_single_us": s_single * 1e6,
        "transform_batch1000_ms": t_batch * 1e3, "search_batch1000_ms": s_batch * 1e3,
        "ratio_single": t_single / s_single, "ratio_batch": t_batch / s_batch,
    }


def run(root: Path, sizes: list[int], seed: int) -> dict[str, Any]:
    d = load(root)
    qrels = d["qrels"]
    old_b, old_q, new_b, new_q = d["old_base"], d["old_query"], d["new_base"], d["new_query"]
    truth, _ = exact_knn(new_b, new_q, K, "ip")
    rows: list[dict[str, Any]] = [
        {"setting": "old/old", **figures(old_b, old_q, truth, qrels)},
        {"setting": "new/new raw", **figures(new_b, new_q, truth, qrels)},
    ]
    order = np.random.default_rng(seed).permutation(len(new_b))
    cost: dict[str, float] = {}
    for size in sizes:
        pairs = order[:size]
        for method in METHODS:
            t0 = time.perf_counter()
            transform, report = fit_model_transform(
                old_b[pairs], new_b[pairs], "cosine", method=method, seed=seed, check=False)
            fit_s = time.perf_counter() - t0
            mapped_b = transform.apply(new_b)
            rows.append({
                "setting": "new/old", "method": method, "pairs": size, "fit_s": fit_s,
                "verdict": report.verdict, "reasons": report.reasons,
                "extra_dims": transform.extra_dims,
                "holdout_recall": report.recall, "learning_curve": report.learning_curve,
                "calibration": report.calibration,
                **figures(old_b, transform.to_old_space(new_q), truth, qrels),
                "new_new_transform": figures(mapped_b, transform.apply(new_q), truth, qrels),
            })
            if method == "bt2" and size == max(sizes):
                cost = transform_cost(transform, old_b, new_q)
    return {"dataset": root.name, "seed": seed, "k": K, "rows": rows, "transform_cost": cost}


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"Model swap on {result['dataset']} (seed {result['seed']}), exact search over all "
        "documents as old vectors; recall@10 against the new model's exact neighbours.",
        "",
        "| setting | method | pairs | gate | nDCG@10 | recall@10 | new/new via transform "
        "nDCG / recall | held-out new/old / old/old | extra dims | fit s |",
        "|---|---|---:|---|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        if r["setting"] != "new/old":
            lines.append(f"| {r['setting']} | | | | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} "
                         "| | | | |")
            continue
        nn, h = r["new_new_transform"], r["holdout_recall"]
        lines.append(
            f"| new/old | {r['method']} | {r['pairs']} | {r['verdict']} | {r['ndcg@10']:.4f} "
            f"| {r['recall@10']:.4f} | {nn['ndcg@10']:.4f} / {nn['recall@10']:.4f} "
            f"| {h['new_old']:.3f} / {h['old_old']:.3f} | {r['extra_dims']} "
            f"| {r['fit_s']:.1f} |"
        )
    c = result["transform_cost"]
    if c:
        lines += [
            "",
            f"Transform cost (bt2): one query {c['transform_single_us']:.1f} us vs exact search "
            f"{c['search_single_us']:.1f} us ({100 * c['ratio_single']:.1f}%); 1,000 queries "
            f"{c['transform_batch1000_ms']:.2f} ms vs {c['search_batch1000_ms']:.2f} ms "
            f"({100 * c['ratio_batch']:.1f}%).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="DATA/scifact")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/model_swap.json"))
    args = parser.parse_args(argv)
    result = run(args.dataset, args.sizes, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
