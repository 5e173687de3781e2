"""Mixed-version search: how to make scores of old and new stored vectors comparable.

``python -m bench.mixed_versions DATA/scifact [--pairs 2000] [--seed 0] [--out FILE.json]``

A collection of SciFact's documents embedded by the old model (``old_static``) gets the new
model (``minilm``) registered from ``--pairs`` paired documents; then a share of the documents
(0, 25, 50, 75, 100%) is backfilled under the new model and both models' queries search the
mixed gallery exhaustively (every posting, deep rerank: only the scoring rule differs). Rules:

* ``raw``: cross-version scores as computed (base-space images), no calibration;
* ``calibrated``: cross-version scores through the version's affine calibration (the shipped
  rule, :func:`anns.models.fit_calibration`);
* ``common``: every candidate scored on the base-space images only, new/new included.

Reports nDCG@10 (BEIR qrels) and recall@10 against the query model's exact neighbours over the
whole corpus embedded by that model (what a finished backfill answers), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import anns
from anns.evaluation import exact_knn
from anns.models import Models
from anns.vectors import as_vectors
from bench.model_swap import load, ndcg_at_10, recall

K = 10
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
EXHAUSTIVE = {"max_postings": 100000, "eps2": math.inf, "refine_factor": 1000}


def _with_calibration(models: Models, identity: bool) -> Models:
    versions = tuple(replace(v, calibration={}) if identity else v for v in models.versions)
    return replace(models, versions=versions)


def run(root: Path, pairs: int, seed: int) -> list[dict[str, Any]]:
    data = load(root)
    old, new = data["old_base"], data["new_base"]
    n = len(old)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        coll = anns.Collection.create(
            Path(tmp) / "c", anns.IndexConfig(dim=old.shape[1], metric="cosine", posting_size=64))
        coll.add(old, np.arange(n))
        coll.add_model("new", old[order[:pairs]], new[order[:pairs]], force=True)
        fitted = coll._models
        truth = {"new": exact_knn(new, data["new_query"], K, "ip")[0],
                 "default": exact_knn(old, data["old_query"], K, "ip")[0]}
        done = 0
        for share in SHARES:
            upto = int(round(share * n))
            if upto > done:
                ids = order[done:upto]
                coll.upsert(new[ids], ids, model="new")
                done = upto
            for rule in ("raw", "calibrated", "common"):
                coll._models = _with_calibration(fitted, identity=(rule != "calibrated"))
                coll._view = coll._make_view(coll._view.basis, coll._view.router,
                                             coll._view.codec, models=coll._models)
                for model, queries in (("new", data["new_query"]), ("default", data["old_query"])):
                    if rule == "common":
                        ids = _common(coll, model, queries)
                    else:
                        ids = coll.search(queries, K, model=model, **EXHAUSTIVE).ids
                    rows.append({"backfilled": share, "rule": rule, "query_model": model,
                                 "ndcg@10": round(ndcg_at_10(ids, data["qrels"]), 4),
                                 "recall@10": round(recall(ids, truth[model]), 4)})
        coll._models = fitted
        coll.close()
    return rows


def _common(coll: anns.Collection, model: str, queries: np.ndarray) -> np.ndarray:
    """Exact search of the base-space images of the queries over those of every stored
    vector (what scoring on the common dims only gives)."""
    version = coll._models.get(model)
    view = coll._view
    q = version.base_image(as_vectors(queries, version.dim, metric="cosine"),
                           view.basis)
    ids, gallery, _ = zip(*coll._storage.iter_vectors(coll.dim))
    found = exact_knn(np.concatenate(gallery), q, K, "ip")[0]
    return np.concatenate(ids)[found]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = run(args.root, args.pairs, args.seed)
    print("| backfilled | rule | queries | nDCG@10 | recall@10 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backfilled']:.0%} | {r['rule']} | {r['query_model']} | {r['ndcg@10']:.4f} "
              f"| {r['recall@10']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
