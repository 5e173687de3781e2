"""Issue 3's targets, read off one run's rows: the summary an ``anns bench --adaptive`` run
prints and writes beside its JSON (``<out>.summary.md``).

Every figure is a ratio within the run. The tables' operating point of a series, for a
recall@10 target, is its row with the highest batch QPS among its rows reaching the target
(:func:`best_at`). The targets read each measure at its own best point reaching the target,
for anns and the peers alike: the highest batch QPS, the highest single QPS, the least serving
RSS (the larger of after warm-up and after the timed passes: :func:`_memory`) and the fewest
bytes read per query (single-query pass, device reads from ``/proc/self/io``)
(:func:`least_at`); the targets table names the anns knobs each figure came from.
"Recall at equal QPS" is :func:`recall_at_qps`: the best recall among a series' rows at least
that fast (measured points only, no interpolation).

Device traffic: reads per query x QPS, against the ``disk`` rows' measured random 4 KiB
O_DIRECT read rate (:mod:`bench.disk`, the best level of any disk row of the run). anns rows
count read calls (``read_calls_per_query``: read system calls, each a device read under
O_DIRECT); rows without that count are estimated as bytes / 4096. The batch pass's reads per
query x batch QPS and the single-query pass's x single QPS are both set against the device's
best rate (a single query's multi-gets also keep several reads in flight, one per I/O
thread); bytes per second against the device's MB/s the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench import variants as v

Row = dict[str, Any]
#: Issue 3's recall@10 operating point.
TARGET = 0.95
BLOCK = 4096


# --------------------------------------------------------------------------- operating points
def series(row: Row) -> str:
    """The line a row belongs to in the plot and the summaries."""
    label = str(row["system"])
    if row.get("variant"):
        label += f"[{row['variant']}]"
    if row.get("cold"):
        label += " cold"
    return label


def best_at(rows: list[Row], target: float, key: str) -> Row | None:
    """The row with the highest ``key`` among rows with recall@10 >= target, if any."""
    ok = [r for r in rows if r.get("recall@10") is not None and r["recall@10"] >= target
          and r.get(key)]
    return max(ok, key=lambda r: r[key]) if ok else None


def least_at(rows: list[Row], target: float, measure: Callable[[Row], float | None]
             ) -> Row | None:
    """The row with the least ``measure`` among rows with recall@10 >= target, if any."""
    ok = [r for r in rows if r.get("recall@10") is not None and r["recall@10"] >= target
          and measure(r) is not None]
    return min(ok, key=measure) if ok else None  # type: ignore[arg-type,return-value]


def _bytes(row: Row | None) -> float | None:
    return None if row is None else row.get("bytes_read_per_query")


def recall_at_qps(rows: list[Row], qps: float, key: str = "qps_batch") -> float | None:
    """The best recall@10 among rows at least ``qps`` fast (``key``), if any."""
    ok = [r["recall@10"] for r in rows if r.get(key) and r[key] >= qps]
    return max(ok) if ok else None


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(recall, qps) points not beaten on both by another point, by increasing recall."""
    front: list[tuple[float, float]] = []
    for recall, qps in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or qps > front[-1][1]:
            front.append((recall, qps))
    return front[::-1]


def by_series(rows: list[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(series(r), []).append(r)
    return groups


# --------------------------------------------------------------------------- formatting
def _num(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def _dims(row: Row) -> str:
    p = row["params"]
    return f"{p.get('d_route', '-')}/{p.get('d_scan', '-')}/{p.get('d_rerank', '-')}"


def _knobs(row: Row) -> str:
    p = row["params"]
    eps2 = float(p.get("eps2", "nan"))  # "inf" in a JSON file (see bench.run)
    return f"mp {p.get('max_postings')}, rf {float(p['refine_factor']):g}, eps2 {eps2:g}"


def _val(row: Row | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def _memory(row: Row | None) -> float | None:
    """Serving RSS of a row: the larger of after warm-up and after the timed passes (rows of
    earlier runs have only the first; see :mod:`bench.harness`)."""
    if row is None:
        return None
    figures = [row.get(k) for k in ("rss_serving_mb", "rss_served_mb")]
    return max((f for f in figures if f is not None), default=None)


# --------------------------------------------------------------------------- the report
def report(rows: list[Row]) -> str:
    """The issue-3 summary (markdown) of a run's rows; "" when it has no anns variants."""
    anns = [r for r in rows if r["system"] == "anns" and r.get("variant")]
    if not anns:
        return ""
    groups = by_series([r for r in rows if r["system"] != "disk"])
    disks = [r for r in rows if r["system"] == "disk"]
    variant_rows = {str(r["variant"]): [x for x in anns if x["variant"] == r["variant"]]
                    for r in anns}
    out: list[str] = []
    out += _disk_section(disks)
    out += _variants_section(variant_rows, disks)
    out += _time_section(variant_rows)
    out += _targets_section(groups, variant_rows)
    out += _rigid_adaptive_section(variant_rows)
    out += _adanns_opq_section(variant_rows)
    return "\n".join(out)


def _disk_section(disks: list[Row]) -> list[str]:
    if not disks:
        return ["No disk row in this run (device bandwidth not measured).", ""]
    body = [[str(d.get("when", "-")), f"QD{lv['qd']}", _num(lv["reads_per_s"]),
             _num(lv["mb_per_s"], ".1f"), _num(lv["lat_p50_us"], ".0f"),
             _num(lv["lat_p99_us"], ".0f"), _num(lv.get("cpu_us_per_read"), ".1f"),
             _num(d.get("loadavg_1m"), ".1f")]
            for d in disks for lv in d["levels"]]
    return (["### Device: random 4 KiB O_DIRECT reads (Python threads, one read in flight each)",
             ""]
            + _table(["when", "queue depth", "reads/s", "MB/s", "p50 us", "p99 us",
                      "CPU us / read", "load"], body)
            + ["", "CPU us / read: the process's CPU time (user + system) per read, the host's "
               "cost of one O_DIRECT read before any engine work.", ""])


def _reads(row: Row, batch: bool) -> tuple[float, bool]:
    """Reads per query of a row's batch or single pass, and whether they were counted (False:
    estimated as bytes / 4096)."""
    key = "batch_read_calls_per_query" if batch else "read_calls_per_query"
    if row.get(key) is not None:
        return float(row[key]), True
    nbytes = row["batch_bytes_read_per_query" if batch else "bytes_read_per_query"]
    return float(nbytes) / BLOCK, False


def _variants_section(variant_rows: dict[str, list[Row]], disks: list[Row]) -> list[str]:
    levels = [lv for d in disks for lv in d["levels"]]
    peak = max(levels, key=lambda lv: lv["reads_per_s"]) if levels else None
    peak_mb = max(lv["mb_per_s"] for lv in levels) if levels else None
    head = ["variant", "bytes/vec", "route/scan/rerank dims", "knobs at the point",
            "recall@10", "batch QPS", "single QPS", "RSS MB (served)", "read/q single (reads)",
            "read/q batch (reads)", "batch reads/s, MB/s (% of device)",
            "single reads/s, MB/s (% of device)"]
    lines: list[str] = []
    for target in (0.90, TARGET):
        body = []
        for label, group in variant_rows.items():
            b = best_at(group, target, "qps_batch")
            if b is None:
                best = max(group, key=lambda r: r["recall@10"])
                body.append([label, str(best.get("bytes_per_vector")), _dims(best),
                             f"not reached (best recall {best['recall@10']:.4f})"]
                            + ["-"] * (len(head) - 4))
                continue
            traffic = []
            for batch, qps_key, bytes_key in ((True, "qps_batch", "batch_bytes_read_per_query"),
                                              (False, "qps_single", "bytes_read_per_query")):
                reads, counted = _reads(b, batch)
                rate, mb = reads * b[qps_key], b[bytes_key] * b[qps_key] / 2**20
                pct = (f" ({100 * rate / peak['reads_per_s']:.0f}%, {100 * mb / peak_mb:.0f}%)"
                       if peak and peak_mb else "")
                traffic.append((reads, counted, f"{rate:,.0f}, {mb:.1f}{pct}"))
            (rb, cb, tb), (rs, cs, ts) = traffic
            body.append([
                label + (" (tuned)" if b.get("tuned") else ""), str(b.get("bytes_per_vector")),
                _dims(b), _knobs(b), f"{b['recall@10']:.4f}", _num(b["qps_batch"]),
                _num(b["qps_single"]), _num(_memory(b), ".1f"),
                _num(b["bytes_read_per_query"] / 1024, ",.0f")
                + f" K ({rs:.1f}{'' if cs else '*'})",
                _num(b["batch_bytes_read_per_query"] / 1024, ",.0f")
                + f" K ({rb:.1f}{'' if cb else '*'})",
                tb, ts,
            ])
        lines += [f"### anns variants at recall@10 >= {target:.2f} (best batch QPS point)", ""]
        lines += _table(head, body) + [""]
    lines += [
        "Reads: read calls per query (O_DIRECT: each a device read); * = estimated as bytes / "
        "4096. Batch reads/s = batch reads per query x batch QPS, single = single-pass reads "
        "per query x single QPS; percentages of the device's best measured reads/s and MB/s "
        "(random 4 KiB, any queue depth, start or end of the run).", ""]
    return lines


def _time_section(variant_rows: dict[str, list[Row]]) -> list[str]:
    """Per variant, at its best batch point at the target: ms per query in each stage."""
    stages = ("route", "fetch", "scan", "rerank", "python")
    body = []
    for label, group in variant_rows.items():
        b = best_at(group, TARGET, "qps_batch")
        if b is None or "profile" not in b:
            continue
        for name, key in (("batch", "profile"), ("single", "profile_single")):
            prof = b.get(key)
            if prof:
                total = sum(prof.get(st, 0.0) for st in stages)
                body.append([label, name] + [f"{prof.get(st, 0.0) * 1e3:.3f}" for st in stages]
                            + [f"{total * 1e3:.3f}"])
    if not body:
        return []
    return ([f"### Where anns spends its time at recall@10 >= {TARGET} (ms per query, the "
             "best batch point's knobs)", ""]
            + _table(["variant", "pass", *stages, "total"], body)
            + ["", "python: the call outside the four stages (validation, chunking, results).",
               ""])


def _targets_section(groups: dict[str, list[Row]], variant_rows: dict[str, list[Row]]
                     ) -> list[str]:
    engine = variant_rows.get(v.ADAPTIVE) or next(iter(variant_rows.values()))
    name = v.ADAPTIVE if v.ADAPTIVE in variant_rows else next(iter(variant_rows))
    a_b, a_s = best_at(engine, TARGET, "qps_batch"), best_at(engine, TARGET, "qps_single")

    def ref(s: str, key: str = "qps_batch") -> Row | None:
        return best_at(groups[s], TARGET, key) if s in groups else None

    a_mem, a_bytes = least_at(engine, TARGET, _memory), least_at(engine, TARGET, _bytes)

    def least(s: str, measure: Callable[[Row], float | None]) -> Row | None:
        return least_at(groups[s], TARGET, measure) if s in groups else None

    checks: list[tuple[str, float | None, str, bool | None, Row | None]] = []

    def check(what: str, value: float | None, goal: str, ok: bool | None,
              point: Row | None) -> None:
        checks.append((what, value, goal, ok, point))

    diskanns = ("diskann", "diskann cold")
    goals = [("faiss-ivf-flat", 1.0), ("faiss-ivfpq-opq", 1.0), *[(d, 2.0) for d in diskanns]]
    for s, goal in goals:
        r = _ratio(_val(a_b, "qps_batch"), _val(ref(s), "qps_batch"))
        check(f"batch QPS / {s}", r, f">= {goal:g}x", None if r is None else r >= goal, a_b)
    for s in diskanns:
        r = _ratio(_val(a_s, "qps_single"), _val(ref(s, "qps_single"), "qps_single"))
        check(f"single QPS / {s}", r, ">= 2x", None if r is None else r >= 2.0, a_s)
    r = _ratio(_memory(a_mem), _memory(least("faiss-ivf-flat", _memory)))
    check("serving RSS / faiss-ivf-flat", r, "<= 0.10", None if r is None else r <= 0.10, a_mem)
    for s in diskanns:
        r = _ratio(_memory(a_mem), _memory(least(s, _memory)))
        check(f"serving RSS / {s}", r, "< 1", None if r is None else r < 1.0, a_mem)
    for s in diskanns:
        r = _ratio(_bytes(a_bytes), _bytes(least(s, _bytes)))
        check(f"bytes read per query / {s}", r, "<= 1", None if r is None else r <= 1.0, a_bytes)
    for label in (v.FULL_PRECISION, v.SQ8):
        other = least_at(variant_rows.get(label, []), TARGET, _bytes)
        r = _ratio(_bytes(a_bytes), _bytes(other))
        if label == v.FULL_PRECISION:
            check(f"bytes read per query / anns[{label}] (float32 postings)", r, "<= 0.25",
                  None if r is None else r <= 0.25, a_bytes)
        else:
            check(f"bytes read per query / anns[{label}] (information)", r, "-", None, a_bytes)
    verdict = _adaptive_beats_rigid(variant_rows)
    lines = [f"### Issue 3 targets at recall@10 >= {TARGET} (anns[{name}]; each measure at its "
             "best point reaching the target, for every system)", ""]
    body = [[what, "-" if val is None else f"x{val:.3f}", goal,
             "n/a" if ok is None else ("**met**" if ok else "not met"),
             "-" if point is None else f"{_knobs(point)} ({point['recall@10']:.4f})"]
            for what, val, goal, ok, point in checks]
    body.append(["adaptive beats rigid at equal bytes", verdict[1], "higher QPS at equal "
                 "recall or higher recall at equal QPS",
                 "n/a" if verdict[0] is None else ("**met**" if verdict[0] else "not met"), "-"])
    return lines + _table(["target", "measured", "goal", "", "anns point (recall@10)"],
                          body) + [""]


def _adaptive_beats_rigid(variant_rows: dict[str, list[Row]]) -> tuple[bool | None, str]:
    rigid, adaptive = variant_rows.get(v.RIGID), variant_rows.get(v.ADAPTIVE)
    if not rigid or not adaptive:
        return None, "-"
    r, a = best_at(rigid, TARGET, "qps_batch"), best_at(adaptive, TARGET, "qps_batch")
    if r is None and a is None:
        return None, "neither reaches the target"
    if r is None:
        return True, "only adaptive reaches the target"
    if a is None:
        return False, "only rigid reaches the target"
    qps = a["qps_batch"] / r["qps_batch"]
    rec_a = recall_at_qps(adaptive, r["qps_batch"])
    rec_r = r["recall@10"]
    text = f"QPS x{qps:.2f} at {TARGET}; recall at rigid's QPS {_num(rec_a, '.4f')} vs {rec_r:.4f}"
    return qps > 1.0 or (rec_a is not None and rec_a > rec_r), text


def _rigid_adaptive_section(variant_rows: dict[str, list[Row]]) -> list[str]:
    rigid, adaptive = variant_rows.get(v.RIGID), variant_rows.get(v.ADAPTIVE)
    if not rigid or not adaptive:
        return []
    lines = [f"### Rigid vs adaptive at equal bytes ({rigid[0].get('bytes_per_vector')} "
             "bytes per vector)", ""]
    body = []
    for target in (0.90, TARGET):
        for key in ("qps_batch", "qps_single"):
            r, a = best_at(rigid, target, key), best_at(adaptive, target, key)
            ratio = _ratio(_val(a, key), _val(r, key))
            body.append([f"{key.replace('qps_', '')} QPS at recall@10 >= {target:.2f}",
                         _num(_val(r, key)) + (f" ({_dims(r)})" if r else ""),
                         _num(_val(a, key)) + (f" ({_dims(a)})" if a else ""),
                         "-" if ratio is None else f"x{ratio:.2f}"])
    for target in (0.90, TARGET):
        for ref_name, ref in (("rigid", rigid), ("adaptive", adaptive)):
            p = best_at(ref, target, "qps_batch")
            if p is None:
                continue
            q = p["qps_batch"]
            rr, ra = recall_at_qps(rigid, q), recall_at_qps(adaptive, q)
            body.append([f"recall@10 at batch QPS >= {q:,.0f} ({ref_name}'s {target:.2f} point)",
                         _num(rr, ".4f"), _num(ra, ".4f"),
                         "-" if rr is None or ra is None else f"{ra - rr:+.4f}"])
    tuned = next((r for r in adaptive if r.get("tuned")), None)
    lines += _table(["measure", "rigid", "adaptive", "adaptive vs rigid"], body) + [""]
    if tuned:
        lines += [f"Adaptive's tuned profile ({_knobs(tuned)}, dims {_dims(tuned)}): recall@10 "
                  f"{tuned['recall@10']:.4f} on the benchmark queries, {tuned['qps_batch']:,.0f} "
                  f"batch QPS.", ""]
    return lines


def _adanns_opq_section(variant_rows: dict[str, list[Row]]) -> list[str]:
    names = [n for n in (v.OPQ_PREFIX_HALF, v.OPQ_FULL_HALF, v.RIGID, v.ADAPTIVE)
             if n in variant_rows]
    if v.RIGID not in variant_rows or len(names) < 2:
        return []
    rigid = variant_rows[v.RIGID]
    levels = [(t, p["qps_batch"]) for t in (0.90, TARGET)
              if (p := best_at(rigid, t, "qps_batch")) is not None]
    head = ["variant", "bytes/vec", "scan dims", "batch QPS at 0.90", "batch QPS at 0.95"]
    head += [f"recall@10 at QPS >= {q:,.0f} (rigid's {t:.2f})" for t, q in levels]
    head += ["best recall@10"]
    body = []
    for n in names:
        g = variant_rows[n]
        row = [n, str(g[0].get("bytes_per_vector")), str(g[0]["params"].get("d_scan"))]
        row += [_num(_val(best_at(g, t, "qps_batch"), "qps_batch")) for t in (0.90, TARGET)]
        row += [_num(recall_at_qps(g, q), ".4f") for _, q in levels]
        row += [f"{max(r['recall@10'] for r in g):.4f}"]
        body.append(row)
    return (["### AdANNS-OPQ: codes of a prefix vs of the full vector", ""]
            + _table(head, body) + [""])


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.targets RUN.json``: print the summary of a finished run again."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m bench.targets", description=main.__doc__)
    parser.add_argument("rows", type=Path, help="the JSON file of an anns bench run")
    args = parser.parse_args(argv)
    rows = json.loads(args.rows.read_text(), parse_constant=float)
    print(report(rows) or "no anns variants in this run")


if __name__ == "__main__":
    main()
