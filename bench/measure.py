"""The timed operations, identical for lazylayer's mount and for the baselines on local disk.

Every reader here is plain POSIX I/O from this process (or `find`), so both sides of a ratio pay
exactly the same user-space cost and differ only in what sits below the path.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from bench.errors import BenchError

MiB = 1 << 20
#: application read size for sequential reads (the FUSE maximum request, limits §2.1)
SEQ_READ = MiB
PAGE = 4096


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation between two."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def read_sequential(path: Path) -> tuple[float, int]:
    """(seconds, bytes) to read ``path`` start to end in 1 MiB reads into one buffer; no hashing
    in the loop (sha256 runs near page-cache speed and would hide the difference)."""
    buf = bytearray(SEQ_READ)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return time.perf_counter() - start, total


def read_files(paths: Iterable[Path]) -> int:
    """Read every file whole (what loading a program and its libraries touches, at most)."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


def random_reads(path: Path, offsets: list[int]) -> list[float]:
    """Latency in seconds of one 4 KiB pread per offset, with POSIX_FADV_RANDOM so the kernel's
    read-ahead does not turn a 4 KiB read into a large one (the same on every file system)."""
    latencies = []
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for offset in offsets:
            start = time.perf_counter_ns()
            os.pread(fd, PAGE, offset)
            latencies.append((time.perf_counter_ns() - start) / 1e9)
    finally:
        os.close(fd)
    return latencies


def spread_offsets(size: int, chunk_size: int, seed: int) -> list[int]:
    """One 4 KiB-aligned offset inside each ``chunk_size`` chunk of the file, in shuffled order:
    on an empty cache every such read is a first touch of its chunk (a true cold read)."""
    rng = random.Random(seed)
    offsets = []
    for start in range(0, size - PAGE + 1, chunk_size):
        pages = max(1, (min(chunk_size, size - start)) // PAGE)
        offsets.append(start + rng.randrange(pages) * PAGE)
    rng.shuffle(offsets)
    return offsets


def uniform_offsets(size: int, count: int, seed: int) -> list[int]:
    """``count`` uniformly drawn 4 KiB-aligned offsets (fixed seed: the same every run)."""
    rng = random.Random(seed)
    pages = size // PAGE
    return [rng.randrange(pages) * PAGE for _ in range(count)]


@dataclass(frozen=True)
class WalkResult:
    seconds: float
    entries: int


def find_stat(root: Path) -> WalkResult:
    """`find ROOT -printf '%s\\n'`: readdir of every directory and an lstat of every entry
    (GNU find only stats for %s), as `du`, backup tools and image scanners do."""
    start = time.perf_counter()
    done = subprocess.run(["find", str(root), "-printf", "%s\n"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"find {root} failed: {done.stderr.decode(errors='replace').strip()[:300]}")
    return WalkResult(seconds, done.stdout.count(b"\n"))
