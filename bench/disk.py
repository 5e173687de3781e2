"""The device's random-read rate: the ceiling a disk-resident index runs against.

:func:`measure` writes a scratch file (default 256 MiB) under a work directory, then reads
random 4 KiB-aligned blocks of it with ``O_DIRECT`` (no page cache: every read reaches the
device) from ``qd`` threads, each with one read in flight (``os.preadv`` releases the GIL), so
``qd`` is the queue depth. Reported per queue depth: reads/s, MB/s and the read latency
percentiles. The benchmark measures queue depth 1 (a lone synchronous reader), 32 (more than a
batch's multi-gets keep in flight with 16 I/O threads) and 64 (whether 32 saturates the
device). Python issues the reads, so the rates are a lower bound of what the device serves.
Each level also reports the process's CPU time (user + system, every thread) per read: what
one synchronous read costs the host before any engine work, the floor under a single query's
time on a machine with few cores.

The result is one benchmark row with ``system`` "disk" (the DESIGN.md section 6 keys are
present, None where they do not apply) so that the run's summary can set each anns row's
device traffic (bytes read per query x QPS) against it::

    python -m bench.disk --work DIR [--file-mb 256] [--seconds 3] [--qd 1,32]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness

SYSTEM = "disk"
BLOCK = 4096
SCRATCH_NAME = "disk-randread.bin"
DEFAULT_QUEUE_DEPTHS = (1, 32, 64)


def _write_scratch(path: Path, size: int) -> None:
    """A file of ``size`` bytes of random data, flushed to the device."""
    chunk = np.random.default_rng(0).integers(0, 256, 1 << 22, dtype=np.uint8).tobytes()
    with open(path, "wb") as fh:
        for offset in range(0, size, len(chunk)):
            fh.write(chunk[: min(len(chunk), size - offset)])
        fh.flush()
        os.fsync(fh.fileno())


def _read_at_depth(path: Path, qd: int, seconds: float) -> dict[str, Any]:
    """``qd`` threads reading random blocks of ``path`` with O_DIRECT for ``seconds``."""
    blocks = path.stat().st_size // BLOCK
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(qd)]
    errors: list[BaseException] = []

    def reader(slot: int) -> None:
        rng = random.Random(slot)
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT requires
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        lat = latencies[slot]
        try:
            while not stop.is_set():
                offset = rng.randrange(blocks) * BLOCK
                t = time.perf_counter()
                if os.preadv(fd, [buf], offset) != BLOCK:
                    raise OSError(f"short O_DIRECT read at offset {offset} of {path}")
                lat.append(time.perf_counter() - t)
        except BaseException as e:  # reported by the caller
            errors.append(e)
        finally:
            os.close(fd)
            buf.close()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(qd)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if errors:
        raise errors[0]
    lat = np.array([x for per in latencies for x in per], dtype=np.float64)
    reads = len(lat)
    return {
        "qd": qd,
        "reads": reads,
        "seconds": round(elapsed, 3),
        "reads_per_s": round(reads / elapsed, 1),
        "mb_per_s": round(reads * BLOCK / elapsed / harness.MB, 2),
        "lat_p50_us": round(float(np.percentile(lat, 50)) * 1e6, 1) if reads else None,
        "lat_p99_us": round(float(np.percentile(lat, 99)) * 1e6, 1) if reads else None,
        "cpu_us_per_read": round(cpu / reads * 1e6, 1) if reads else None,
    }


def measure(
    work: Path, file_mb: int = 256, seconds: float = 3.0,
    queue_depths: tuple[int, ...] = DEFAULT_QUEUE_DEPTHS,
) -> dict[str, Any]:
    """Random 4 KiB O_DIRECT read rate of the device holding ``work``, as a benchmark row.

    The scratch file is removed afterwards. Raises OSError where O_DIRECT is unsupported
    (tmpfs, some overlay filesystems).
    """
    work.mkdir(parents=True, exist_ok=True)
    path = work / SCRATCH_NAME
    try:
        _write_scratch(path, file_mb << 20)
        levels = [_read_at_depth(path, qd, seconds) for qd in queue_depths]
    finally:
        path.unlink(missing_ok=True)
    for level in levels:
        harness.log(f"disk: random {BLOCK // 1024} KiB O_DIRECT reads at QD{level['qd']}: "
                    f"{level['reads_per_s']:.0f}/s ({level['mb_per_s']:.1f} MB/s), "
                    f"p50 {level['lat_p50_us']} us, p99 {level['lat_p99_us']} us, "
                    f"{level['cpu_us_per_read']} us CPU a read")
    row: dict[str, Any] = {key: None for key in harness.ROW_KEYS}
    row.update(
        system=SYSTEM,
        params={"block_bytes": BLOCK, "file_mb": file_mb, "seconds_per_level": seconds,
                "o_direct": True, "queue_depths": list(queue_depths)},
        levels=levels,
        loadavg_1m=round(os.getloadavg()[0], 2),
    )
    return row


def peak(row: dict[str, Any]) -> dict[str, Any]:
    """The level of a disk row with the most reads per second."""
    return max(row["levels"], key=lambda level: level["reads_per_s"])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.disk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="directory on the device")
    parser.add_argument("--file-mb", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="per queue depth")
    parser.add_argument("--qd", default=",".join(map(str, DEFAULT_QUEUE_DEPTHS)),
                        help="comma-separated queue depths")
    args = parser.parse_args(argv)
    depths = tuple(int(q) for q in args.qd.split(","))
    harness.emit(measure(args.work, args.file_mb, args.seconds, depths))


if __name__ == "__main__":
    main()
