"""Dedicated virtualenv for the DiskANN benchmark peer.

PyPI ``diskannpy`` 0.7.0 pins ``numpy==1.25``, which cannot share an environment
with faiss-cpu 1.15 / numpy 2.x that the rest of the benchmark uses.  The DiskANN
peer therefore runs ``bench/diskann_runner.py`` as a subprocess under the python of
a separate virtualenv created here on first use.

The venv lives at ``<root>/.bench-venv-diskann`` (ignore it in git).  A marker file
written after a successful install makes :func:`ensure_venv` idempotent and cheap;
the marker records the requirement list, so changing :data:`REQUIREMENTS` triggers a
fresh install.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["REQUIREMENTS", "VENV_DIRNAME", "ensure_venv", "venv_python"]

VENV_DIRNAME = ".bench-venv-diskann"
"""Directory name of the venv, created directly under the repository root."""

REQUIREMENTS: tuple[str, ...] = ("diskannpy==0.7.0", "numpy==1.25.0")
"""Exactly what ``diskann_runner.py`` needs: diskannpy and the numpy it pins."""

_MARKER_NAME = ".anns-install-ok"


def _log(msg: str) -> None:
    """Write a progress line to stderr."""
    print(f"[diskann-venv] {msg}", file=sys.stderr, flush=True)


def venv_python(root: Path) -> Path:
    """Return the path of the venv's python executable (it may not exist yet)."""
    return Path(root) / VENV_DIRNAME / "bin" / "python"


def _run(cmd: Sequence[str]) -> None:
    """Run ``cmd``, streaming its output to stderr; raise RuntimeError on failure."""
    _log("running: " + " ".join(cmd))
    try:
        # stdout -> stderr: callers may reserve their own stdout for data.
        proc = subprocess.run(list(cmd), stdout=sys.stderr, stderr=sys.stderr, check=False)
    except OSError as exc:
        raise RuntimeError(f"could not run {' '.join(cmd)!r}: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"DiskANN venv setup failed: command {' '.join(cmd)!r} exited with code {proc.returncode}"
        )


def ensure_venv(root: Path) -> Path:
    """Create (once) the DiskANN virtualenv under ``root`` and return its python.

    The venv is made with ``sys.executable -m venv`` and gets only
    :data:`REQUIREMENTS`.  If the marker file from a previous successful install is
    present and lists the same requirements, nothing is done.

    Raises:
        RuntimeError: if creating the venv or a pip install fails; the message names
            the failing command.
    """
    venv_dir = Path(root).resolve() / VENV_DIRNAME
    python = venv_dir / "bin" / "python"
    marker = venv_dir / _MARKER_NAME
    wanted = {"requirements": list(REQUIREMENTS)}

    if marker.is_file() and python.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                return python
        except (OSError, ValueError):
            pass  # unreadable marker: reinstall below

    _log(f"creating virtualenv at {venv_dir} (first use; downloads ~100 MB)")
    # --clear: start from scratch if an earlier attempt left a half-built venv.
    _run([sys.executable, "-m", "venv", "--clear", str(venv_dir)])
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--only-binary=:all:",
            *REQUIREMENTS,
        ]
    )
    _run([str(python), "-c", "import diskannpy, numpy; print(numpy.__version__)"])
    marker.write_text(json.dumps(wanted) + "\n")
    _log("DiskANN virtualenv ready")
    return python


if __name__ == "__main__":  # pragma: no cover - manual helper
    _root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    sys.stdout.write(str(ensure_venv(_root)) + "\n")
