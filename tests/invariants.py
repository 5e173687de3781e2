"""Invariants every collection must satisfy, and the brute-force oracle searches are held to.

Shared by the module tests and the state machine. The on-disk checks read the collection only
through ``anns.storage`` (decode_posting / decode_record, iter_postings / get_records).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anns import IndexConfig, SearchParams, SearchResult, StorageConfig
from anns.basis import Basis
from anns.routing import Router
from anns.storage import TOMBSTONE, Storage, decode_posting, decode_record

def exhaustive(count: int, k: int) -> SearchParams:
    """Search settings under which every posting is probed and every stored vector reranked,
    so that the result must equal brute force for a collection of ``count`` vectors:
    max_postings at its maximum, pruning off (eps2 = inf), and k * refine_factor >= count.
    (refine_factor is not simply at its maximum: the scan sizes its work by
    k * refine_factor, so the maximum makes every search of a small collection slow.)"""
    refine = min(1000.0, max(1.0, math.ceil(count / k)))
    return SearchParams(max_postings=100_000, eps2=math.inf, refine_factor=refine)


# ------------------------------------------------------------------------ brute force
def brute_force(
    base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN in float64: (ids int64 [q, k] with -1 padding, scores float64 [q, k]).

    l2: squared distances ascending (+inf padding); ip/cosine: similarities descending
    (-inf padding); cosine normalises both sides.
    """
    base = np.asarray(base, dtype=np.float64).reshape(-1, queries.shape[1])
    queries = np.asarray(queries, dtype=np.float64)
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)
        order = np.argsort(scores, axis=1, kind="stable")
    else:
        scores = queries @ base.T
        order = np.argsort(-scores, axis=1, kind="stable")
    order = order[:, :k]
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    worst = np.inf if metric == "l2" else -np.inf
    out_scores = np.full((len(queries), k), worst)
    m = order.shape[1]
    out_ids[:, :m] = np.asarray(ids, dtype=np.int64)[order]
    out_scores[:, :m] = np.take_along_axis(scores, order, axis=1)
    return out_ids, out_scores


def assert_matches_brute_force(
    result: SearchResult,
    base: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    *,
    exact_ids: bool = False,
) -> None:
    """``result`` is an exact k-NN answer over (base, ids), tolerant of distance ties.

    Checks shapes and dtypes, the padding, that the distances equal the brute-force ones, that
    every returned id is stored with exactly the distance reported, and that no id repeats in
    a row. With ``exact_ids`` (data without ties) the ids must also equal brute force's.
    """
    q = len(queries)
    assert result.ids.shape == (q, k) and result.ids.dtype == np.int64
    assert result.distances.shape == (q, k) and result.distances.dtype == np.float32
    want_ids, want = brute_force(base, ids, queries, k, metric)
    got = result.distances.astype(np.float64)
    filled = want_ids >= 0
    np.testing.assert_array_equal(result.ids >= 0, filled, err_msg="padding differs")
    scale = 1.0 + np.abs(want[filled]).max(initial=0.0)
    np.testing.assert_allclose(got[filled], want[filled], rtol=1e-4, atol=1e-4 * scale)
    worst = np.inf if metric == "l2" else -np.inf
    assert (got[~filled] == worst).all(), "padding distances must be the worst value"
    # each returned id carries its own true distance (rules out right-distance, wrong-id)
    position = {int(i): j for j, i in enumerate(np.asarray(ids).tolist())}
    for row in range(q):
        found = result.ids[row][result.ids[row] >= 0]
        assert len(set(found.tolist())) == len(found), f"query {row} repeats an id: {found}"
        assert all(int(i) in position for i in found), f"query {row} returns unknown ids"
        rows = np.array([position[int(i)] for i in found], dtype=np.int64)
        _, own = brute_force(base[rows], found, queries[row : row + 1], len(rows), metric)
        # brute_force sorted them; compare as sorted multisets of (id -> own distance)
        mine = np.sort(own[0]) if metric == "l2" else np.sort(own[0])[::-1]
        np.testing.assert_allclose(
            got[row][: len(found)], mine, rtol=1e-4, atol=1e-4 * scale,
            err_msg=f"query {row}: reported distances are not those of the returned ids",
        )
    if exact_ids:
        # ids must equal brute force's wherever the true distance is not tied (within float32
        # error) with a neighbour in the ranking, including the first one left out
        _, wider = brute_force(base, ids, queries, k + 1, metric)
        tie = 1e-5 * scale
        with np.errstate(invalid="ignore"):  # inf - inf between paddings
            gaps = np.abs(np.diff(wider, axis=1))
        gaps = np.where(np.isnan(gaps), np.inf, gaps)
        before = np.concatenate([np.full((q, 1), np.inf), gaps[:, : k - 1]], axis=1)
        after = gaps[:, :k]
        distinct = (before > tie) & (after > tie)
        np.testing.assert_array_equal(
            np.where(distinct, result.ids, -2), np.where(distinct, want_ids, -2),
            err_msg="ids differ from brute force where distances are not tied",
        )


# -------------------------------------------------------------------------- on disk
@dataclass
class Layout:
    """What a collection holds, decoded: postings, per-id records, vectors and routing."""

    config: IndexConfig
    postings: dict[int, np.ndarray]  # posting id -> vector ids in it
    records: dict[int, tuple[int, np.ndarray]]  # vector id -> (flags, posting ids)
    vectors: dict[int, np.ndarray]  # vector id -> stored float32 vector (collection basis)
    centroids: np.ndarray
    count: int


def read_layout(storage: Storage, ids: np.ndarray) -> Layout:
    """Decode the collection behind ``storage``; records and vectors of ``ids`` only (the
    records family has no listing API, so the caller names every id ever written)."""
    config = IndexConfig.model_validate_json(storage.get_meta("config") or b"")
    router_blob = storage.get_meta("router")
    centroids = (
        Router.from_bytes(router_blob, "flat", 1).centroids
        if router_blob is not None
        else np.empty((0, config.dim), np.float32)
    )
    code_size = _code_size(storage, config)
    postings = {}
    for key, blob in storage.iter_postings():
        p_ids, codes = decode_posting(bytes(blob), code_size)
        assert codes.shape == (len(p_ids), code_size)
        postings[int.from_bytes(bytes(key), "big")] = p_ids.copy()
    ids = np.asarray(ids, dtype=np.int64)
    records = {}
    for vid, blob in zip(ids.tolist(), storage.get_records(ids)):
        if blob is not None:
            records[vid] = decode_record(bytes(blob))
    vectors = {}
    basis_blob = storage.get_meta("basis")
    basis = Basis.from_bytes(basis_blob) if basis_blob is not None else None
    for vid, blob in zip(ids.tolist(), storage.get_vectors(ids)):
        if blob is None:
            continue
        if config.vector_dtype != "float32" and len(blob) == config.dim:
            # stored as given: its stored form is its image through the basis
            assert basis is not None
            raw = np.frombuffer(bytes(blob), dtype=config.vector_dtype).astype(np.float32)
            vectors[vid] = basis.apply(raw[None, :])[0]
        else:
            vectors[vid] = np.frombuffer(bytes(blob), dtype="<f4").copy()
    return Layout(config, postings, records, vectors, centroids,
                  int(storage.get_meta("count") or b"0"))


def read_layout_at(path: Path, ids: np.ndarray) -> Layout:
    """:func:`read_layout` of a closed collection directory (opened read-only)."""
    storage = Storage.open(path, StorageConfig(read_only=True))
    try:
        return read_layout(storage, ids)
    finally:
        storage.close()


def _code_size(storage: Storage, config: IndexConfig) -> int:
    from anns.quantization import load_codec

    blob = storage.get_meta("codec")
    if blob is None:
        return 0
    return load_codec(config.codec, config.scan_dims, config.metric, blob).code_size


def check_layout(layout: Layout, live: np.ndarray, deleted: np.ndarray = ()) -> None:
    """Postings, records and vectors agree with each other and with the set of live ids.

    * no posting exceeds max_posting_size or repeats an id, and posting ids name centroids;
    * every live id has a vector and a record listing 1..replica_cap distinct postings, and it
      is in exactly those postings (so every vector is in at least one posting);
    * every posting entry is a live id; deleted ids have no vector and are in no posting;
    * the stored count is the number of live ids.
    """
    cfg = layout.config
    live_set = {int(i) for i in np.asarray(live).tolist()}
    held_by: dict[int, set[int]] = {}
    for pid, p_ids in layout.postings.items():
        assert 0 <= pid < len(layout.centroids), f"posting {pid} has no centroid"
        assert len(p_ids) <= cfg.max_posting_size, (
            f"posting {pid} holds {len(p_ids)} > max_posting_size {cfg.max_posting_size}"
        )
        assert len(set(p_ids.tolist())) == len(p_ids), f"posting {pid} repeats an id"
        for vid in p_ids.tolist():
            assert vid in live_set, f"posting {pid} holds id {vid}, which is not live"
            held_by.setdefault(vid, set()).add(pid)
    for vid in live_set:
        assert vid in layout.vectors, f"live id {vid} has no stored vector"
        assert vid in layout.records, f"live id {vid} has no record"
        flags, pids = layout.records[vid]
        assert flags == 0, f"live id {vid} has record flags {flags}"
        assert 1 <= len(pids) <= cfg.replica_cap, (
            f"id {vid} is in {len(pids)} postings (replica_cap {cfg.replica_cap})"
        )
        assert len(set(pids.tolist())) == len(pids), f"record of {vid} repeats a posting"
        assert set(pids.tolist()) == held_by.get(vid, set()), (
            f"record of {vid} lists postings {sorted(pids.tolist())} but it is in "
            f"{sorted(held_by.get(vid, set()))}"
        )
    for vid in np.asarray(deleted, dtype=np.int64).tolist():
        if vid in live_set:
            continue
        assert vid not in layout.vectors, f"deleted id {vid} still has a vector"
        assert vid not in held_by, f"deleted id {vid} is still in postings {held_by[vid]}"
        if vid in layout.records:
            assert layout.records[vid][0] == TOMBSTONE
    assert layout.count == len(live_set), f"count {layout.count} != {len(live_set)} live ids"


def check_replication(layout: Layout, ids: np.ndarray) -> None:
    """The postings of each id obey the build's replication rules (true Euclidean distances).

    With c_1 the nearest centroid of x: x is in c_1's posting; every posting c_j it is in has
    dist(x, c_j) <= (1 + eps1) dist(x, c_1) (closure); and taking its postings in distance
    order, for every c_j after c_i: dist(c_i, c_j) >= dist(x, c_j) (the RNG rule, as applied).
    """
    cfg = layout.config
    cents = layout.centroids.astype(np.float64)
    for vid in np.asarray(ids).tolist():
        x = layout.vectors[vid].astype(np.float64)[: cents.shape[1]]  # routing prefix
        to_all = np.sqrt(((cents - x) ** 2).sum(axis=1))
        _, pids = layout.records[vid]
        d = to_all[pids]
        order = np.argsort(d)
        pids, d = pids[order], d[order]
        tol = 1e-4 * (1.0 + to_all.min())
        assert d[0] <= to_all.min() + tol, (
            f"id {vid}: nearest posting held {pids[0]} at {d[0]}, nearest centroid "
            f"{int(to_all.argmin())} at {to_all.min()}"
        )
        assert (d <= (1.0 + cfg.eps1) * to_all.min() + tol).all(), (
            f"id {vid}: postings {pids.tolist()} at {d.tolist()} break the closure rule "
            f"(nearest {to_all.min()}, eps1 {cfg.eps1})"
        )
        for j in range(1, len(pids)):
            for i in range(j):
                cc = float(np.sqrt(((cents[pids[i]] - cents[pids[j]]) ** 2).sum()))
                assert cc >= d[j] - tol, (
                    f"id {vid}: RNG rule broken: centroid {pids[i]} is {cc} from {pids[j]}, "
                    f"closer than the vector ({d[j]})"
                )


def assert_same_vectors(actual: np.ndarray, expected: np.ndarray) -> None:
    """What get() returns against what was stored: vectors come back through the collection
    basis (a rotation), so they are equal up to float32 rounding relative to their norm."""
    expected = np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if not expected.size:
        return
    scale = np.linalg.norm(expected, axis=-1, keepdims=True)
    err = np.abs(actual - expected)
    assert (err <= 1e-5 * scale + 1e-12).all(), (
        f"vectors differ beyond rounding: max error {err.max():.3g}, norms up to {scale.max():.3g}"
    )
