"""Model swap: how much of a re-embedding does a transform fitted from a sample of pairs give,
searched exactly and through an anns collection, and how fast is the backfill that finishes it?

``python -m bench.model_swap DATA/scifact [--sizes 500 1000 2000 4000] [--seed 0]
[--synthetic-rows 100000] [--no-index] [--out bench/out/model_swap.json]``

DATA/scifact holds ``old_static/`` (the old model), ``minilm/`` (the new one) and ``raw/``
(BEIR qrels). For each pair-sample size, the first ``size`` documents of a seeded permutation
are the pairs; each method (``bt2``: anns.compat's fit; ``procrustes``: plain orthogonal
Procrustes; ``ridge``: an affine ridge map, the Drift-Adapter baselines) is fitted from them
by :func:`anns.compat.fit_model_transform` (which also gives the gate's verdict and its
held-out figures). Then:

* **exact search** over the whole corpus as old vectors: nDCG@10 against raw/qrels/test.tsv
  and recall@10 against the new model's exact neighbours, for old/old, new/old (new queries
  through the transform against old vectors), new/new raw and new/new through the transform
  (both sides mapped); the *hub share* of each (share of all top-10 slots taken by the 1% of
  documents found most often); and the gate's held-out figures next to the same figures in a
  corpus-sized gallery (the documents outside the pairs as queries over all documents);
* **through an anns collection** (``anns.build`` of the old document vectors, cosine, default
  config): old/old; new/old with the new model registered by ``Collection.add_model`` (bt2,
  the same pairs and seed; ``force`` where the gate refuses, so that every size is measured);
  then a full ``Collection.backfill`` of every document under the largest sample's version and
  new/new through the index, again after ``Collection.rebase`` (the other versions retired,
  routing and codes rebuilt in the new model's space); and, as the reference, new/new through a collection built from
  the new model's vectors (re-embedding into a new collection). Each with the default search
  knobs, wider ones and exhaustively (every posting, deep rerank: what remains is the
  transform's loss, not the index's);
* the query-time cost of the transform (one query, and a 1,000-query batch) against exact
  search over the corpus and against a search through the index;
* backfill throughput: the SciFact backfill above and, unless ``--synthetic-rows 0``, a
  synthetic one of that many 128-d vectors (clustered data; the new model a rotation of the
  old plus a little noise).

Fits the gate accepts although their nDCG@10 is below old/old's are refitted on other pair
samples and splits of the same size (:func:`gate_stability`) and explained in the notes.
Writes the rows to ``--out`` and a markdown table next to it (``.md``), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import anns
from anns.backfill import DEFAULT_BATCH_ROWS
from anns.compat import fit_model_transform
from anns.evaluation import clustered_data, exact_knn

METHODS = ("bt2", "procrustes", "ridge")
K = 10
#: Search knobs of the index rows: the defaults, wider (more postings, a deeper rerank), and
#: exhaustive (every posting, everything reranked: what remains is the transform's loss).
KNOBS: dict[str, dict[str, Any]] = {
    "default": {},
    "wide": {"max_postings": 64, "eps2": math.inf, "refine_factor": 10},
    "exhaustive": {"max_postings": 100_000, "eps2": math.inf, "refine_factor": 1000},
}
SYNTHETIC_DIM = 128
SYNTHETIC_PAIRS = 2000


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


def hub_share(ids: np.ndarray, n_docs: int) -> float:
    """Share of all top-10 slots taken by the 1% of documents found most often. Old/old on
    SciFact: about 0.10; a map whose outputs shrink towards the mean leaves the
    query-independent part of the score (the translation) to pick the same few documents for
    every query, and this grows."""
    found = ids[:, :K].ravel()
    counts = np.bincount(found[found >= 0], minlength=n_docs)
    return float(np.sort(counts)[::-1][: max(1, n_docs // 100)].sum() / max(1, counts.sum()))


def figures(ids: np.ndarray, truth: np.ndarray, qrels: dict[int, dict[int, int]],
            n_docs: int) -> dict[str, float]:
    return {"ndcg@10": ndcg_at_10(ids, qrels), "recall@10": recall(ids, truth),
            "hub_share": hub_share(ids, n_docs)}


def exact(base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
          qrels: dict[int, dict[int, int]]) -> dict[str, float]:
    return figures(exact_knn(base, queries, K, "ip")[0], truth, qrels, len(base))


def others(gallery: np.ndarray, queries: np.ndarray, own: np.ndarray) -> np.ndarray:
    """ids [q, K] of the exact neighbours of corpus documents ``own`` [q] (their vectors
    ``queries``) in ``gallery`` (the whole corpus), each document itself excluded."""
    ids, _ = exact_knn(gallery, queries, K + 1, "ip")
    keep = ids != own[:, None]
    keep[keep.all(axis=1), -1] = False  # itself not found: drop the last instead
    return ids[keep].reshape(len(queries), K)


def transform_cost(transform: Any, base: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Seconds per query (single) and per 1,000-query batch: the transform vs exact search."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    batch = np.ascontiguousarray(np.resize(queries, (1000, queries.shape[1])), np.float32)
    one = batch[:1]
    mapped = transform.to_old_space(batch)
    t_single = median_seconds(lambda: transform.to_old_space(one), 2000)
    s_single = median_seconds(lambda: index.search(mapped[:1], K), 300)
    t_batch = median_seconds(lambda: transform.to_old_space(batch), 20)
    s_batch = median_seconds(lambda: index.search(mapped, K), 5)
    return {
        "transform_single_us": t_single * 1e6, "search_single_us": s_single * 1e6,
        "transform_batch1000_ms": t_batch * 1e3, "search_batch1000_ms": s_batch * 1e3,
        "ratio_single": t_single / s_single, "ratio_batch": t_batch / s_batch,
    }


def median_seconds(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ----------------------------------------------------------------------------- exact search
def run_exact(d: dict[str, Any], truth: np.ndarray, order: np.ndarray, sizes: list[int],
              seed: int) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """The exact-search rows; also the bt2 transform of each sample size."""
    qrels = d["qrels"]
    old_b, old_q, new_b, new_q = d["old_base"], d["old_query"], d["new_base"], d["new_query"]
    rows: list[dict[str, Any]] = [
        {"setting": "old/old", "search": "exact", **exact(old_b, old_q, truth, qrels)},
        {"setting": "new/new raw", "search": "exact", **exact(new_b, new_q, truth, qrels)},
    ]
    bt2: dict[int, Any] = {}
    for size in sizes:
        pairs, rest = order[:size], order[size:]
        corpus_truth = others(new_b, new_b[rest], rest)
        corpus_old_old = recall(others(old_b, old_b[rest], rest), corpus_truth)
        for method in METHODS:
            t0 = time.perf_counter()
            transform, report = fit_model_transform(
                old_b[pairs], new_b[pairs], "cosine", method=method, seed=seed, check=False)
            fit_s = time.perf_counter() - t0
            mapped_b = transform.apply(new_b)
            images = transform.to_old_space(new_b)
            rows.append({
                "setting": "new/old", "search": "exact", "method": method, "pairs": size,
                "fit_s": fit_s, "verdict": report.verdict, "reasons": report.reasons,
                "extra_dims": transform.extra_dims, "n_holdout": report.n_holdout,
                "holdout_recall": report.recall, "learning_curve": report.learning_curve,
                "calibration": report.calibration,
                # how far the documents' old-space images spread around their mean, against
                # the translation every new/old score shares
                "spread": float(np.linalg.norm(images - images.mean(axis=0), axis=1).mean()),
                "offset_norm": float(np.linalg.norm(transform.offset)),
                # the gate's two figures again, with every document of the corpus in the
                # gallery (queries: the documents outside the pairs, themselves excluded)
                "corpus_recall": {
                    "new_old": recall(others(old_b, images[rest], rest), corpus_truth),
                    "old_old": corpus_old_old, "queries": len(rest)},
                **exact(old_b, transform.to_old_space(new_q), truth, qrels),
                "new_new_transform": exact(mapped_b, transform.apply(new_q), truth, qrels),
            })
            if method == "bt2":
                bt2[size] = transform
    return rows, bt2


# --------------------------------------------------------------------------- through anns
def run_index(d: dict[str, Any], truth: np.ndarray, order: np.ndarray, sizes: list[int],
              seed: int, workdir: Path, bt2: dict[int, Any]) -> dict[str, Any]:
    """Rows searched through a collection built from the old document vectors, before and
    after a full backfill under the largest sample's version, and through one built from the
    new ones (re-embedding into a new collection: the reference); the query-time cost and the
    backfill's figures. Each row's ``index_recall`` is recall@10 against the exact search of
    the same setting (``bt2``: the exact fits of the same pairs and seed): the index's own
    loss."""
    qrels = d["qrels"]
    old_b, old_q, new_b, new_q = d["old_base"], d["old_query"], d["new_base"], d["new_query"]
    n = len(old_b)
    config = {"metric": "cosine", "seed": seed}
    rows: list[dict[str, Any]] = []

    def measure(coll: anns.Collection, setting: str, queries: np.ndarray, model: str,
                reference: np.ndarray, **extra: Any) -> None:
        for knobs, params in KNOBS.items():
            ids = coll.search(queries, K, model=model, **params).ids
            rows.append({"setting": setting, "search": "index", "knobs": knobs, **extra,
                         **figures(ids, truth, qrels, n),
                         "index_recall": recall(ids, reference)})

    t0 = time.perf_counter()
    anns.build(workdir / "scifact", old_b, config=config)
    build_s = time.perf_counter() - t0
    with anns.Collection.open(workdir / "scifact") as coll:
        measure(coll, "old/old", old_q, "default", exact_knn(old_b, old_q, K, "ip")[0])
        for size in sizes:
            pairs = order[:size]
            report = coll.add_model(f"minilm-{size}", old_b[pairs], new_b[pairs], force=True,
                                    current=False, seed=seed)
            measure(coll, "new/old", new_q, f"minilm-{size}",
                    exact_knn(old_b, bt2[size].to_old_space(new_q), K, "ip")[0],
                    method="bt2", pairs=size, verdict=report.verdict,
                    extra_dims=report.extra_dims)
        name = f"minilm-{max(sizes)}"
        cost = index_cost(coll, name, bt2[max(sizes)], old_q, new_q)
        t0 = time.perf_counter()
        job = coll.backfill(name, new_b, np.arange(n), progress=False)
        seconds = time.perf_counter() - t0
        backfill = backfill_row("scifact", job, seconds, new_b.shape[1],
                                coll.models()["versions"][name]["width"])
        counts = {v: info["count"] for v, info in coll.models()["versions"].items()}
        measure(coll, "new/new backfilled", new_q, name, truth, method="bt2",
                pairs=max(sizes), counts=counts)
        # finish the migration: the new version current, every other retired, then routing
        # and codes rebuilt in its space
        coll.set_current(name)
        for other in [v for v in coll.models()["versions"] if v != name]:
            coll.retire(other)
        rebase = coll.rebase().to_dict()
        measure(coll, "new/new rebased", new_q, name, truth, method="bt2", pairs=max(sizes),
                counts=counts)
    anns.build(workdir / "native", new_b, config=config)
    with anns.Collection.open(workdir / "native") as coll:
        measure(coll, "new/new native", new_q, "default", truth)
    return {"rows": rows, "build_s": build_s, "cost": cost, "backfill": backfill,
            "rebase": rebase}


def index_cost(coll: anns.Collection, name: str, transform: Any, old_q: np.ndarray,
               new_q: np.ndarray) -> dict[str, float]:
    """Median seconds of a search through the index, one query per call and all queries in
    one call, for old queries (model ``default``) and new ones (``name``, before any backfill),
    and the transform alone on the same queries (the exact fit of the same pairs and seed)."""
    out: dict[str, float] = {}
    for model, queries in (("default", old_q), (name, new_q)):
        coll.search(queries, K, model=model)  # warm caches
        singles = []
        for q in queries:
            t0 = time.perf_counter()
            coll.search(q[None], K, model=model)
            singles.append(time.perf_counter() - t0)
        side = "old" if model == "default" else "new"
        out[f"{side}_single_ms"] = float(np.median(singles)) * 1e3
        out[f"{side}_batch_ms"] = median_seconds(
            lambda: coll.search(queries, K, model=model), 5) * 1e3  # noqa: B023
    out["transform_single_ms"] = median_seconds(
        lambda: transform.to_old_space(new_q[:1]), 2000) * 1e3
    out["transform_batch_ms"] = median_seconds(lambda: transform.to_old_space(new_q), 50) * 1e3
    out["ratio_single"] = out["transform_single_ms"] / out["new_single_ms"]
    out["ratio_batch"] = out["transform_batch_ms"] / out["new_batch_ms"]
    out["queries"] = float(len(new_q))
    return out


def backfill_row(dataset: str, job: Any, seconds: float, dim: int, width: int) -> dict[str, Any]:
    """One backfill's figures: wall seconds of the call (input fingerprint included) and the
    job's own (batches only)."""
    return {"dataset": dataset, "rows": job.rows, "dim": dim, "width": width,
            "batch_rows": DEFAULT_BATCH_ROWS, "batches": job.batches, "seconds": seconds,
            "job_seconds": job.seconds, "vectors_per_second": job.rows / seconds}


def synthetic_backfill(rows: int, seed: int, workdir: Path) -> dict[str, Any]:
    """Backfill throughput of ``rows`` x 128-d: clustered old vectors, the new model a random
    rotation of them plus noise (so no extra dims: 128 floats stored per vector)."""
    old, _ = clustered_data(rows, SYNTHETIC_DIM, seed=seed)
    rng = np.random.default_rng(seed + 1)
    rotation, _ = np.linalg.qr(rng.standard_normal((SYNTHETIC_DIM, SYNTHETIC_DIM)))
    new = (old @ rotation + rng.standard_normal(old.shape) * 0.01).astype(np.float32)
    anns.build(workdir / "synthetic", old)
    with anns.Collection.open(workdir / "synthetic") as coll:
        coll.add_model("new", old[:SYNTHETIC_PAIRS], new[:SYNTHETIC_PAIRS], seed=seed)
        t0 = time.perf_counter()
        job = coll.backfill("new", new, np.arange(rows), progress=False)
        seconds = time.perf_counter() - t0
        width = coll.models()["versions"]["new"]["width"]
    return backfill_row(f"synthetic {rows} x {SYNTHETIC_DIM}", job, seconds, SYNTHETIC_DIM,
                        width)


def run(root: Path, sizes: list[int], seed: int, *, index: bool = True,
        synthetic_rows: int = 100_000) -> dict[str, Any]:
    load_before = os.getloadavg()
    d = load(root)
    truth, _ = exact_knn(d["new_base"], d["new_query"], K, "ip")
    order = np.random.default_rng(seed).permutation(len(d["new_base"]))
    rows, bt2 = run_exact(d, truth, order, sizes, seed)
    result: dict[str, Any] = {
        "dataset": root.name, "seed": seed, "k": K, "rows": rows,
        "transform_cost": transform_cost(bt2[max(sizes)], d["old_base"], d["new_query"]),
        "index": None, "backfill": [],
    }
    flag_gate_passes(d, result, seed)
    with tempfile.TemporaryDirectory(prefix="model_swap-") as tmp:
        if index:
            found = run_index(d, truth, order, sizes, seed, Path(tmp), bt2)
            result["rows"] += found.pop("rows")
            result["backfill"].append(found.pop("backfill"))
            result["index"] = found
        if synthetic_rows:
            result["backfill"].append(synthetic_backfill(synthetic_rows, seed, Path(tmp)))
    # timings are of a shared machine: the load next to them says how shared
    result["loadavg"] = {"start": load_before, "end": os.getloadavg()}
    return result


# ------------------------------------------------------------------------ the gate's margin
def gate_stability(d: dict[str, Any], method: str, size: int, seed: int,
                   samples: int = 5, splits: int = 2) -> dict[str, Any]:
    """The gate's verdict and held-out margin (new/old - old/old recall@10) over other pair
    samples of ``size`` (seeds ``seed + 1 ...``) and hold-out splits: how much a verdict
    depends on the sample."""
    margins, accepted = [], 0
    for s in range(seed + 1, seed + 1 + samples):
        pairs = np.random.default_rng(s).permutation(len(d["new_base"]))[:size]
        for split in range(splits):
            _, report = fit_model_transform(d["old_base"][pairs], d["new_base"][pairs],
                                            "cosine", method=method, seed=split, check=False)
            margins.append(report.recall["new_old"] - report.recall["old_old"])
            accepted += report.verdict == "accepted"
    return {"fits": len(margins), "accepted": accepted, "margin_min": min(margins),
            "margin_max": max(margins), "margin_mean": float(np.mean(margins))}


def flag_gate_passes(d: dict[str, Any], result: dict[str, Any], seed: int) -> None:
    """Fits the gate accepts whose nDCG@10 on the test queries is below old/old's get the
    gate's stability figures (``gate_stability``): the bench's notes explain them."""
    old_old = next(r for r in result["rows"] if r["setting"] == "old/old"
                   and r["search"] == "exact")
    for r in result["rows"]:
        if r["setting"] == "new/old" and r["search"] == "exact" \
                and r["verdict"] == "accepted" and r["ndcg@10"] < old_old["ndcg@10"]:
            r["gate_stability"] = gate_stability(d, r["method"], r["pairs"], seed)


# -------------------------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    exact_rows = [r for r in rows if r["search"] == "exact"]
    old_old = next(r for r in exact_rows if r["setting"] == "old/old")
    raw = next(r for r in exact_rows if r["setting"] == "new/new raw")
    lines = [
        f"Model swap on {result['dataset']} (seed {result['seed']}). Exact search over all "
        "documents as old vectors; recall@10 against the new model's exact neighbours; hub: "
        "share of top-10 slots taken by the 1% most found documents; held-out: the gate's "
        "figures (recall@10 among the held-out pairs); corpus: the same with the documents "
        "outside the pairs as queries over the whole corpus.",
        "",
        "| setting | method | pairs | gate | nDCG@10 | recall@10 | hub | new/new via transform "
        "nDCG / recall | held-out new/old / old/old | corpus new/old / old/old | extra dims "
        "| fit s |",
        "|---|---|---:|---|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for r in exact_rows:
        if r["setting"] != "new/old":
            lines.append(f"| {r['setting']} | | | | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} "
                         f"| {r['hub_share']:.3f} | | | | | |")
            continue
        nn, h, c = r["new_new_transform"], r["holdout_recall"], r["corpus_recall"]
        lines.append(
            f"| new/old | {r['method']} | {r['pairs']} | {r['verdict']} | {r['ndcg@10']:.4f} "
            f"| {r['recall@10']:.4f} | {r['hub_share']:.3f} "
            f"| {nn['ndcg@10']:.4f} / {nn['recall@10']:.4f} "
            f"| {h['new_old']:.4f} / {h['old_old']:.4f} | {c['new_old']:.4f} / "
            f"{c['old_old']:.4f} | {r['extra_dims']} | {r['fit_s']:.1f} |"
        )
    c = result["transform_cost"]
    lines += [
        "",
        f"Transform cost (bt2, {max(r.get('pairs', 0) for r in exact_rows)} pairs): one query "
        f"{c['transform_single_us']:.1f} us vs exact search {c['search_single_us']:.1f} us "
        f"({100 * c['ratio_single']:.1f}%); 1,000 queries {c['transform_batch1000_ms']:.2f} ms "
        f"vs {c['search_batch1000_ms']:.2f} ms ({100 * c['ratio_batch']:.1f}%).",
    ]
    if result["index"] is not None:
        lines += index_markdown(result, old_old, raw)
    if result["backfill"]:
        load = result["loadavg"]
        lines += ["", f"Backfill throughput (load average {load['start'][0]:.1f} at the start of "
                  f"the run, {load['end'][0]:.1f} at its end, on {os.cpu_count()} cores):",
                  "", "| backfill | rows | dim | stored floats | batches | s (call) "
                  "| s (batches) | vectors/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for b in result["backfill"]:
            lines.append(f"| {b['dataset']} | {b['rows']} | {b['dim']} | {b['width']} "
                         f"| {b['batches']} x {b['batch_rows']} rows | {b['seconds']:.2f} "
                         f"| {b['job_seconds']:.2f} | {b['vectors_per_second']:,.0f} |")
    lines += gate_notes(exact_rows, old_old)
    return "\n".join(lines) + "\n"


def index_markdown(result: dict[str, Any], old_old: dict[str, Any],
                   raw: dict[str, Any]) -> list[str]:
    exact_bt2 = {r["pairs"]: r for r in result["rows"]
                 if r["search"] == "exact" and r.get("method") == "bt2"}
    lines = [
        "",
        f"Through an anns collection (cosine, default config; built from the old document "
        f"vectors in {result['index']['build_s']:.1f} s; the new model registered with "
        "add_model (bt2; forced where the gate refuses); then every document backfilled under "
        "the largest sample's version. new/new native: a collection built from the new "
        "model's vectors, what re-embedding into a new collection gives). Knobs: "
        + "; ".join(f"{name} {params or '(library defaults)'}" for name, params in KNOBS.items())
        + ". index recall: recall@10 against exact search of the same setting; vs exact: "
        "nDCG@10 over that of exact search (new/new: the raw new model).",
        "",
        "| setting | pairs | gate | knobs | nDCG@10 | recall@10 | index recall | hub "
        "| nDCG vs exact |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in result["rows"] if r["search"] == "index"):
        ref = {"old/old": old_old, "new/old": exact_bt2.get(r.get("pairs")),
               "new/new backfilled": raw, "new/new rebased": raw,
               "new/new native": raw}[r["setting"]]
        ratio = f"{100 * r['ndcg@10'] / ref['ndcg@10']:.1f}%" if ref else ""
        lines.append(f"| {r['setting']} | {r.get('pairs', '')} | {r.get('verdict', '')} "
                     f"| {r['knobs']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} "
                     f"| {r['index_recall']:.4f} | {r['hub_share']:.3f} | {ratio} |")
    c = result["index"]["cost"]
    lines += [
        "",
        f"Query time through the index ({int(c['queries'])} queries, default knobs, before the "
        f"backfill): one query per call {c['old_single_ms']:.2f} ms old, "
        f"{c['new_single_ms']:.2f} ms new; all in one call {c['old_batch_ms']:.1f} ms old, "
        f"{c['new_batch_ms']:.1f} ms new. The transform alone: {1e3 * c['transform_single_ms']:.1f}"
        f" us per query ({100 * c['ratio_single']:.2f}% of a new query's search), "
        f"{c['transform_batch_ms']:.2f} ms per batch ({100 * c['ratio_batch']:.2f}%).",
    ]
    native = {r["knobs"]: r for r in result["rows"] if r["setting"] == "new/new native"}
    for setting, when in (("new/new backfilled", "the full backfill"),
                          ("new/new rebased", "the rebase")):
        done = [r for r in result["rows"] if r["setting"] == setting]
        if not done:
            continue
        shares = ", ".join(
            f"{100 * r['ndcg@10'] / raw['ndcg@10']:.1f}% with {r['knobs']} knobs (native: "
            f"{100 * native[r['knobs']]['ndcg@10'] / raw['ndcg@10']:.1f}%)" for r in done)
        lines += ["", f"After {when} ({done[0]['counts']}), nDCG@10 through the "
                  f"index is {shares} of exact search with the new model "
                  f"({raw['ndcg@10']:.4f}); the issue's target is at least 99%."]
        gap = [r for r in done if r["index_recall"] < native[r["knobs"]]["index_recall"] - 0.01]
        if gap:
            lines += ["", f"After {when} the index recall falls short of the native "
                      "collection's at " + ", ".join(
                          f"{r['knobs']} knobs ({r['index_recall']:.4f} vs "
                          f"{native[r['knobs']]['index_recall']:.4f})" for r in gap)
                      + (": routing and codes still read the base-space images (the old "
                         "model's space and, for cosine, the translation) until the rebase."
                         if setting == "new/new backfilled" else ".")]
    rebase = result["index"].get("rebase")
    if rebase:
        lines += ["", f"The rebase rewrote {rebase['vectors']} vectors into {rebase['dim']} "
                  f"dims and {rebase['postings_after']} postings (from "
                  f"{rebase['postings_before']}) in {rebase['seconds']:.1f} s."]
    return lines


def gate_notes(exact_rows: list[dict[str, Any]], old_old: dict[str, Any]) -> list[str]:
    """Notes on fits the gate accepts although they do worse than not migrating on the
    queries (rows carrying ``gate_stability``)."""
    flagged = [r for r in exact_rows if "gate_stability" in r]
    if not flagged:
        return []
    bt2 = {r["pairs"]: r for r in exact_rows if r.get("method") == "bt2"}
    lines = ["", "Notes on the gate:"]
    for r in flagged:
        h, c, s = r["holdout_recall"], r["corpus_recall"], r["gate_stability"]
        margin = h["new_old"] - h["old_old"]
        lines.append(
            f"* {r['method']} at {r['pairs']} pairs passes the gate yet does worse than not "
            f"migrating. Held out, new/old recall@10 beats old/old by {margin:+.4f} "
            f"({round(margin * r['n_holdout'] * K)} hits of {r['n_holdout'] * K}, among "
            f"{r['n_holdout']} held-out pairs). On {s['fits']} other pair samples and splits of "
            f"the same size the gate accepts {s['accepted']}, the margin ranging from "
            f"{s['margin_min']:+.4f} to {s['margin_max']:+.4f}. With the whole corpus as "
            f"the gallery the same figures are {c['new_old']:.4f} vs {c['old_old']:.4f}, and "
            f"on the test queries nDCG@10 is {r['ndcg@10']:.4f} vs {old_old['ndcg@10']:.4f}, "
            f"recall@10 {r['recall@10']:.4f} vs {old_old['recall@10']:.4f}; hub share "
            f"{r['hub_share']:.3f} vs {old_old['hub_share']:.3f}. Its documents' old-space "
            f"images spread {r['spread']:.3f} (mean centred norm) around a translation of norm "
            f"{r['offset_norm']:.3f}; bt2's: {bt2[r['pairs']]['spread']:.3f} around "
            f"{bt2[r['pairs']]['offset_norm']:.3f}."
        )
    lines.append(
        "* Why: the gate computes what it documents (held-out new/old against old/old), but it "
        "compares two point estimates without a margin, so a fit that ties not migrating "
        "passes or fails by the luck of the split; and its gallery is the held-out pairs only. "
        "A ridge map regresses towards the mean: its outputs keep little of their spread, so "
        "the translation (a score prior shared by every query) ranks the same few documents "
        "high for every query (the hub share). Among a few hundred held-out items that costs "
        "little; over the whole corpus, and for the test queries, it costs a lot. bt2 and "
        "plain Procrustes are orthonormal: they keep the new model's spread."
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="DATA/scifact")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-rows", type=int, default=100_000,
                        help="rows of the synthetic 128-d backfill (0: skip it)")
    parser.add_argument("--no-index", action="store_true",
                        help="exact search only: no collection, no SciFact backfill")
    parser.add_argument("--out", type=Path, default=Path("bench/out/model_swap.json"))
    args = parser.parse_args(argv)
    result = run(args.dataset, args.sizes, args.seed, index=not args.no_index,
                 synthetic_rows=args.synthetic_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
