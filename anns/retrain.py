"""Retrain: fit a collection's basis, routing and codes again from every vector it stores.

A collection filled by :meth:`anns.Collection.add` fits its basis and trains its clustering
and codec on the first batch written to it (:meth:`~anns.Collection._bootstrap`). A first
batch of one vector trains an sq8 codec whose range is that one vector's: every later code is
the same and the scan cannot rank anything (recall@10 0.004 on 5,000 Gaussian vectors added
one at a time; 0.83 with a first batch of 100). So the collection retrains itself as it grows:
each time it holds twice the vectors it was last trained on, until it was trained on
:data:`TRAINED_ENOUGH` of them (the sample a build trains on is of that order). The cost
doubles with each retrain and stops there: filling a collection one vector at a time does
about twice the work of one build of ``2 * TRAINED_ENOUGH`` vectors in retrains.

A retrain is a bulk build (:mod:`anns.bulk`'s stages) over the stored vectors, written in one
atomic batch and swapped in with the read view (as :mod:`anns.rebase` does), so searches
answer throughout and writes wait. Collections holding several model versions are left as
they are (:meth:`anns.Collection.rebase` rebuilds those, once one version is left).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from anns.memory import release_freed_heap
from anns.rebase import _OneBatch

if TYPE_CHECKING:
    from anns.index import Collection

log = logging.getLogger(__name__)

#: Vectors a collection must have been trained on to stop retraining itself as it grows.
TRAINED_ENOUGH = 16384
#: Meta key: how many vectors the basis, routing and codec were trained on (written by the
#: first add and each retrain; absent for built collections, trained on a build's sample).
TRAINED_ROWS = "trained_rows"


def due(trained: int | None, count: int, mixed: bool) -> bool:
    """Whether a collection trained on ``trained`` vectors and now holding ``count`` should
    retrain: it grew to twice what it was trained on, short of TRAINED_ENOUGH."""
    return trained is not None and not mixed and trained < TRAINED_ENOUGH \
        and count >= 2 * max(trained, 1)


def retrain(coll: Collection) -> int:
    """Fit the basis, clustering and codec again on every stored vector and rewrite the
    vectors, records and postings (the caller holds the collection's write lock). Returns
    the number of vectors trained on."""
    from anns.bulk import _Builder

    started = time.perf_counter()
    view = coll._require_view()
    storage = coll._storage
    parts = list(storage.iter_vectors(coll.dim, view.vector_dtype))
    ids = np.concatenate([p[0] for p in parts])
    stored = np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False)
    del parts
    # the vectors as given: integer ones are stored so, float32 ones in the basis
    raw = stored if view.raw_vectors else view.basis.invert(stored)
    del stored
    sink = _OneBatch(storage)
    builder = _Builder(sink, coll.config, raw, ids, progress=False)  # type: ignore[arg-type]
    router, codec = builder._train()
    rep, dist, router = builder._assign(router)
    posting, row = builder._cap(rep, dist)
    del rep, dist
    posting, router = builder._drop_empty(posting, router)
    builder._write_vectors_and_records(posting, row)
    builder._write_postings(posting, row, codec, router.size)
    basis = builder.basis
    assert basis is not None
    del raw, builder
    release_freed_heap()

    batch = sink.batch_
    for pid in range(router.size, view.router.size):  # postings past the new ones
        batch.delete_posting(pid)
    batch.put_meta("basis", basis.to_bytes())
    batch.put_meta("router", router.to_bytes())
    batch.put_meta("codec", codec.to_bytes())
    batch.put_meta("entries", str(len(posting)).encode())
    batch.put_meta(TRAINED_ROWS, str(len(ids)).encode())
    batch.delete_meta("profiles")
    coll._swap_space(batch, coll.config, basis, router, codec, coll._models,
                     entries=len(posting))
    log.info("retrained basis, routing (%d postings) and codec on %d vectors in %.2fs",
             router.size, len(ids), time.perf_counter() - started)
    return len(ids)
