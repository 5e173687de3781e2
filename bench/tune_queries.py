"""Tuning queries: held-out stored vectors vs a sample of the dataset's own queries.

``python -m bench.tune_queries DATA/sift5k [--recall 0.95] [--config FILE.json] [--out FILE.json]``

Builds the dataset's collection once, then tunes a copy of it to ``--recall`` twice: on
held-out vectors sampled from the collection (``anns tune``'s default) and on the first half
of ``query.npy`` (``--query-vectors``). Each profile then searches the second half, which
neither saw, and is scored against ``gt.npy``: how far a profile's promise holds on queries
of the kind users send.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import anns
from anns.evaluation import recall_at
from anns.vectors import integer_dtype
from bench.harness import load_dataset

K = 10


def run(root: Path, recall: float, config: dict[str, Any]) -> list[dict[str, Any]]:
    data = load_dataset(root)
    half = len(data.queries) // 2
    tuning, unseen = data.queries[:half], data.queries[half:]
    truth = data.gt[half:, :K]
    base = np.load(root / "base.npy", mmap_mode="r")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        dtype = "float32" if data.metric == "cosine" else integer_dtype(base)
        anns.build(built, base, config={"metric": data.metric, "vector_dtype": dtype, **config})
        for source in ("collection", "given"):
            path = Path(tmp) / source
            shutil.copytree(built, path)
            with anns.Collection.open(path) as coll:
                report = coll.tune(recall, k=K,
                                   query_vectors=tuning if source == "given" else None)
                found = coll.search(unseen, K).ids
            profile = report.profile
            rows.append({
                "source": source, "target": recall, "params": profile.params,
                "tuned_recall": profile.recall, "tuned_qps": profile.qps,
                "unseen_recall": round(recall_at(found, truth, K), 4),
                "tuning_queries": profile.queries, "unseen_queries": len(unseen),
            })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--config", type=Path, help="JSON file of IndexConfig fields")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text()) if args.config else {}
    rows = run(args.root, args.recall, config)
    print("| tuned on | knobs | recall on tuning queries | recall on unseen queries |")
    print("|---|---|---|---|")
    for r in rows:
        knobs = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        print(f"| {r['source']} ({r['tuning_queries']}) | {knobs} | {r['tuned_recall']:.4f} "
              f"| {r['unseen_recall']:.4f} ({r['unseen_queries']}) |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
