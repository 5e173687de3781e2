"""Input files for bulk jobs: .npy and .fvecs, memory-mapped so inputs larger than RAM work.

Only the header is trusted after it is checked against the file size; rows are read lazily by
whoever slices the returned array (bulk jobs take them in bounded chunks).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import zipfile
from pathlib import Path

import numpy as np

from anns.errors import CorruptCollectionError, InputFormatError, NotFoundError

SUPPORTED = (".npy", ".fvecs")


def open_matrix(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map a 2-D float matrix from ``.npy`` or ``.fvecs``.

    Returns a read-only array of shape [n, d] backed by the file (for .fvecs a strided float32
    view that skips each row's dimension header). Raises InputFormatError when the file is not
    what its extension says, NotFoundError when it does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"input file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _open_npy(p)
    elif suffix == ".fvecs":
        arr = _open_fvecs(p)
    else:
        raise InputFormatError(f"{p}: unsupported extension {suffix!r}; use one of {SUPPORTED}")
    if arr.ndim != 2:
        raise InputFormatError(f"{p}: expected a 2-D matrix [n, d], got shape {arr.shape}")
    return arr


def open_ids(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map a 1-D integer id array from ``.npy`` (validated later by the gate)."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"ids file {p} does not exist")
    if p.suffix.lower() != ".npy":
        raise InputFormatError(f"{p}: ids must be a .npy file of integers")
    arr = _open_npy(p)
    if arr.ndim != 1:
        raise InputFormatError(f"{p}: ids must be 1-D, got shape {arr.shape}")
    return arr


def _open_npy(p: Path) -> np.ndarray:
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputFormatError(f"{p}: not a valid .npy file ({e})") from e
    if not isinstance(arr, np.ndarray):
        raise InputFormatError(f"{p}: not a .npy array file")
    return arr


def _open_fvecs(p: Path) -> np.ndarray:
    size = p.stat().st_size
    if size < 4:
        raise InputFormatError(f"{p}: too short to be .fvecs ({size} bytes)")
    d = int(np.fromfile(p, dtype="<i4", count=1)[0])
    row_bytes = 4 * (d + 1)
    if d <= 0 or d > 1 << 20 or size % row_bytes:
        raise InputFormatError(
            f"{p}: not a valid .fvecs file (dim header {d}, {size} bytes is not a whole number "
            "of rows)"
        )
    n = size // row_bytes
    raw = np.memmap(p, dtype="<i4", mode="r", shape=(n, d + 1))
    # Every row repeats the dimension; check them in bounded chunks (a wrong file fails here).
    for s in range(0, n, 1 << 16):
        if (raw[s : s + (1 << 16), 0] != d).any():
            raise InputFormatError(f"{p}: row headers disagree with dim {d}: not .fvecs")
    return raw.view("<f4")[:, 1:]


def write_fvecs(path: str | os.PathLike[str], x: np.ndarray) -> None:
    """Write float32 [n, d] as .fvecs (each row prefixed by its dimension as int32)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype="<f4")
    out[:, 0] = np.array([x.shape[1]], dtype="<i4").view("<f4")[0]
    out[:, 1:] = x
    out.tofile(path)


def drop_resident_pages(arr: np.ndarray) -> None:
    """Tell the kernel this process no longer needs the pages of a memory-mapped input.

    Reading a mapped file makes its pages part of the process's RSS until unmapped; a bulk job
    that streams an input larger than RAM drops them after each chunk (they stay in the page
    cache, shared and reclaimable). A no-op for arrays that are not file mappings.
    """
    base: object = arr
    while base is not None:
        handle = getattr(base, "_mmap", None)
        if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            try:
                handle.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # closed or not advisable: nothing to release
                pass
            return
        base = getattr(base, "base", None)


# ------------------------------------------------------------------ stored numpy blobs
def pack_arrays(header: dict[str, object], **arrays: np.ndarray) -> bytes:
    """A versioned blob of named arrays (an ``.npz`` with a JSON header), for meta values
    such as the collection basis or a model transform."""
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def unpack_arrays(
    blob: bytes, what: str, fmt: int, names: tuple[str, ...]
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """(header, arrays) of a :func:`pack_arrays` blob of format ``fmt``; CorruptCollectionError
    naming ``what`` when it is unreadable, of another format or lacks one of ``names``."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            arrays = {name: z[name] for name in names}
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptCollectionError(f"the stored {what} cannot be read: {e!r}") from e
    if header.get("format") != fmt:
        raise CorruptCollectionError(
            f"the stored {what} has format {header.get('format')}; this version of anns reads "
            f"format {fmt}"
        )
    return header, arrays
