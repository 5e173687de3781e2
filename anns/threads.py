"""Process-wide threading policy of the numeric libraries anns calls into.

Two defaults of those libraries are tuned for a machine the process has to itself, and both
cost dearly on a shared one (a server next to other services, a CI box, a laptop):

* **OpenMP spinning.** faiss's OpenMP workers spin between parallel regions unless
  ``OMP_WAIT_POLICY=PASSIVE``; a spinning worker takes the core its partner (or anns's own
  I/O threads) needs. A bulk build measured 97 s spinning against 20 s sleeping on a busy
  2-core machine. The policy is read once, when the OpenMP runtime starts (at the first
  faiss import), so :mod:`anns` sets it, unless the caller did, before importing faiss.
* **BLAS threads.** numpy's OpenBLAS runs every product on all cores with pthreads that spin
  while they wait. The products anns makes with numpy are small (one query or one batch
  through the collection basis: [q, d] x [d, d]); split over threads on a busy machine they
  measured 3-100x slower than on one thread (a [300, 784] x [784, 784] product: 2.5 ms on
  one thread, 8-300 ms on two). :func:`limit_blas_threads` sets the pthreads BLAS libraries
  loaded in the process to one thread; the OpenMP-threaded BLAS inside faiss follows faiss's
  own thread count and is left alone. This changes numpy's BLAS for the whole process; set
  ``ANNS_BLAS_THREADS`` (a number, or ``keep`` to leave BLAS as it is) before importing anns
  to choose otherwise.
* **A parallel region per small call.** faiss opens an OpenMP parallel region for a search
  even when it has one query to run: the idle workers are woken, and on a loaded machine
  the call then waits for a core for each of them at the region's end. One query's scan
  measured 80 us p50 either way, but 180 us mean on one thread against 1,280 us on two
  (load 4 on 2 cores). :func:`serial_faiss` runs a small search on the calling thread alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

#: Environment variable naming numpy's BLAS thread count for the process ("keep": untouched).
BLAS_THREADS_ENV = "ANNS_BLAS_THREADS"


def prefer_passive_openmp() -> None:
    """OpenMP workers sleep when idle, unless the environment already chose a policy. Must
    run before faiss is first imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def limit_blas_threads() -> int | None:
    """Set every pthreads-threaded BLAS loaded in this process (numpy's) to
    ``ANNS_BLAS_THREADS`` threads (default 1); returns the count set, or None when the
    environment says ``keep``. Raises ValueError for a malformed ``ANNS_BLAS_THREADS``."""
    wanted = os.environ.get(BLAS_THREADS_ENV, "1").strip().lower()
    if wanted == "keep":
        return None
    try:
        threads = int(wanted)
        if threads < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{BLAS_THREADS_ENV} must be a positive number of threads or 'keep', "
            f"got {wanted!r}"
        ) from None
    import numpy  # noqa: F401 - loads the BLAS whose threads are set

    from threadpoolctl import ThreadpoolController

    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and getattr(lib, "threading_layer", None) != "openmp":
            lib.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def serial_faiss() -> Iterator[None]:
    """faiss (and its OpenMP BLAS) on one thread inside the block, for the calling thread only.

    OpenMP keeps the thread count per thread (libgomp gives a thread that sets it its own
    copy of the setting), so concurrent searches on other threads keep theirs; the caller's
    count is restored on exit.
    """
    import faiss

    saved = faiss.omp_get_max_threads()
    if saved == 1:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(saved)
