"""Process memory: reading it honestly and giving freed heap back to the operating system.

A batch search holds its fetched postings (tens of MB) only while it runs. glibc keeps freed
heap in its arenas for reuse, so without a trim the process's RSS would report the largest
batch ever served, not what serving needs. :func:`release_freed_heap` asks glibc to return
free pages (``malloc_trim``); elsewhere (musl, macOS) it does nothing.

glibc also gives every thread that allocates its own arena (up to 8 per core), and each
arena keeps its own free memory: the I/O threads of a multi-get would each hold a few MiB of
freed read buffers. And glibc raises its mmap threshold each time a large mmapped block is
freed, so after the first big batch every later buffer of that size comes from the heap,
where a few live small objects pin the pages around it. :func:`configure_malloc`, called
before the database and its threads start, caps the arena count (``M_ARENA_MAX``) and fixes
the mmap threshold at 256 KiB (``M_MMAP_THRESHOLD``): blocks above it (fetched postings,
scan buffers) are mapped and unmapped with the call that uses them. The costs are a little
more lock contention inside malloc and page faults on fresh mappings, both small next to a
batch's reads. These are process-wide settings: an embedding program that tunes malloc
itself can call it first; ours only lower limits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_heap() -> None:
    """Return freed heap pages to the OS where the C library supports it (glibc)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's mallopt parameter numbers


@lru_cache(maxsize=1)
def configure_malloc(arenas: int = 2, mmap_threshold: int = 256 << 10) -> None:
    """Cap glibc's malloc arenas and fix its mmap threshold (once per process; no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    return _status_bytes("VmRSS:")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux's VmHWM, not getrusage's ru_maxrss: the latter survives fork and exec, so a build
    started from a large parent would report the parent's peak.
    """
    return _status_bytes("VmHWM:")


def _status_bytes(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
