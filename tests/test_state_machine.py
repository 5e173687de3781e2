"""A Collection driven by hypothesis through add / upsert / delete / search / reopen, checked
after every step against a brute-force numpy model (chroma's ``test_embeddings`` machine)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

import anns
import strategies as S
from anns import EmptyCollectionError, IdExistsError, IndexConfig
from invariants import (
    assert_matches_brute_force,
    assert_same_vectors,
    check_layout,
    exhaustive,
    read_layout,
)

DIM = 8
ID_SPACE = st.integers(0, 200)  # small, so adds collide with stored and deleted ids


@st.composite
def batches(draw: st.DrawFn, min_size: int = 1, max_size: int = 12) -> tuple[np.ndarray, list[int]]:
    """(vectors float32 [n, DIM], distinct ids [n]). Vectors are Gaussian rows of a drawn seed
    (no distance ties), sometimes with exact copies of one another."""
    ids = draw(st.lists(ID_SPACE, min_size=min_size, max_size=max_size, unique=True))
    x = S.gaussian(draw(S.seeds), len(ids), DIM)
    if len(ids) > 1 and draw(st.booleans()):
        x[-1] = x[0]  # a duplicate vector under another id
    return x, ids


class CollectionMachine(RuleBasedStateMachine):
    stored = Bundle("stored")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="anns-sm-"))
        self.model: dict[int, np.ndarray] = {}
        self.ever: set[int] = set()

    @initialize(
        metric=S.metrics,
        codec=S.codecs,
        posting_size=st.integers(2, 6),
        extra=st.integers(0, 6),
        replica_cap=st.integers(1, 4),
        eps1=st.sampled_from([0.0, 0.2, 1.0]),
    )
    def create(self, metric: str, codec: str, posting_size: int, extra: int, replica_cap: int,
               eps1: float) -> None:
        self.metric = metric
        self.config = IndexConfig.model_validate({
            "dim": DIM, "metric": metric, "codec": codec, "posting_size": posting_size,
            "max_posting_size": posting_size + extra, "replica_cap": replica_cap, "eps1": eps1,
        })
        self.coll = anns.Collection.create(self.dir / "c", self.config)

    def teardown(self) -> None:
        if hasattr(self, "coll"):
            self.coll.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------------- writes
    @rule(target=stored, batch=batches())
    def add(self, batch: tuple[np.ndarray, list[int]]):  # type: ignore[no-untyped-def]
        x, ids = batch
        if any(i in self.model for i in ids):
            count = self.coll.count()
            with pytest.raises(IdExistsError, match="already stored"):
                self.coll.add(x, ids)
            assert self.coll.count() == count
            return multiple()
        assert self.coll.add(x, ids).tolist() == ids
        self._store(x, ids)
        return multiple(*ids)

    @rule(target=stored, batch=batches())
    def upsert(self, batch: tuple[np.ndarray, list[int]]):  # type: ignore[no-untyped-def]
        x, ids = batch
        assert self.coll.upsert(x, ids).tolist() == ids
        self._store(x, ids)
        return multiple(*ids)

    @rule(ids=st.lists(consumes(stored), min_size=1, max_size=6, unique=True),
          unknown=st.lists(ID_SPACE, max_size=3, unique=True))
    def delete(self, ids: list[int], unknown: list[int]) -> None:
        ids = [i for i in ids if i in self.model]  # a bundle may hold an id deleted already
        extra = [i for i in unknown if i not in self.model and i not in ids]
        assert self.coll.delete(ids + extra) == len(ids)
        for i in ids:
            del self.model[i]

    @rule()
    def reopen(self) -> None:
        self.coll.close()
        self.coll = anns.Collection.open(self.dir / "c")

    # -------------------------------------------------------------------------- reads
    @rule(seed=S.seeds, q=st.integers(1, 4), k=st.integers(1, 20), from_stored=st.booleans())
    def search(self, seed: int, q: int, k: int, from_stored: bool) -> None:
        queries = S.gaussian(seed, q, DIM)
        if from_stored and self.model:  # also query exactly at stored vectors
            queries[0] = next(iter(self.model.values()))
        if not self.ever:
            with pytest.raises(EmptyCollectionError):
                self.coll.search(queries, k)
            return
        params = exhaustive(max(len(self.ever), 1), k)
        result = self.coll.search(queries, k, params)
        ids = np.array(sorted(self.model), dtype=np.int64)
        base = (np.stack([self.model[i] for i in ids.tolist()]) if len(ids)
                else np.empty((0, DIM), np.float32))
        assert_matches_brute_force(result, base, ids, queries, k, self.metric)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=5,
                                 unique=True))
        want = np.stack([self.model[i] for i in ids])
        if self.metric == "cosine":  # stored normalised
            want = want / np.linalg.norm(want, axis=1, keepdims=True)
        assert_same_vectors(self.coll.get(ids), want)

    # --------------------------------------------------------------------- invariants
    @invariant()
    def count_and_contains_agree_with_the_model(self) -> None:
        if not hasattr(self, "coll"):
            return
        assert self.coll.count() == len(self.model)
        probe = sorted(self.ever | {201, 202})
        np.testing.assert_array_equal(self.coll.contains(probe), [i in self.model for i in probe])

    @invariant()
    def postings_and_records_agree(self) -> None:
        if not hasattr(self, "coll") or not self.ever:
            return
        everything = np.array(sorted(self.ever), dtype=np.int64)
        live = np.array(sorted(self.model), dtype=np.int64)
        layout = read_layout(self.coll._storage, everything)
        check_layout(layout, live, np.setdiff1d(everything, live))

    def _store(self, x: np.ndarray, ids: list[int]) -> None:
        for row, i in zip(x, ids):
            self.model[i] = row.copy()
            self.ever.add(i)


def test_collection_state_machine() -> None:
    run_state_machine_as_test(
        CollectionMachine,
        settings=settings(
            settings.default,
            stateful_step_count=25,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            deadline=None,
            # shrink the first failure only: shrinking several distinct ones through steps
            # that each open a RocksDB can take hypothesis's full five-minute allowance
            report_multiple_bugs=False,
        ),
    )
