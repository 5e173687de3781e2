"""Process-wide threading policy: numpy's BLAS on one thread, OpenMP workers that sleep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from anns.threads import BLAS_THREADS_ENV, limit_blas_threads

_REPORT = (
    "import anns, json, os; from threadpoolctl import threadpool_info; "
    "print(json.dumps({'omp': os.environ.get('OMP_WAIT_POLICY'), 'blas': ["
    "[i['threading_layer'], i['num_threads']] for i in threadpool_info() "
    "if i['user_api'] == 'blas']}))"
)


def _report(env: dict[str, str]) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in {BLAS_THREADS_ENV, "OMP_WAIT_POLICY"}}
    done = subprocess.run([sys.executable, "-c", _REPORT], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_importing_anns_puts_numpy_blas_on_one_thread_and_openmp_to_sleep() -> None:
    report = _report({})
    assert report["omp"] == "PASSIVE"
    pthreads = [n for layer, n in report["blas"] if layer != "openmp"]  # type: ignore[union-attr]
    assert pthreads and all(n == 1 for n in pthreads)


def test_the_environment_may_choose_otherwise() -> None:
    report = _report({BLAS_THREADS_ENV: "2", "OMP_WAIT_POLICY": "ACTIVE"})
    assert report["omp"] == "ACTIVE"
    # OpenBLAS caps a request at the cores it found
    expected = min(2, os.cpu_count() or 1)
    assert all(n == expected for layer, n in report["blas"] if layer != "openmp")  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_malformed_thread_count_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(BLAS_THREADS_ENV, value)
    with pytest.raises(ValueError, match=f"{BLAS_THREADS_ENV} must be .* got '{value}'"):
        limit_blas_threads()


def test_keep_leaves_blas_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLAS_THREADS_ENV, "keep")
    assert limit_blas_threads() is None


def test_serial_faiss_runs_one_thread_and_restores_only_the_callers_count() -> None:
    import threading

    import faiss

    from anns.threads import serial_faiss

    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        def count_in_a_thread() -> int:
            seen: list[int] = []
            worker = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
            worker.start()
            worker.join()
            return seen[0]

        before = count_in_a_thread()
        with serial_faiss():
            assert faiss.omp_get_max_threads() == 1
            # OpenMP keeps the count per thread: another thread's searches keep theirs
            assert count_in_a_thread() == before
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(saved)
