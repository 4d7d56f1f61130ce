"""Cold read throughput through pool + workers + cache, with 1 and 2 workers (no FUSE).

    .venv/bin/python bench/cold_workers.py [--size MiB] [--runs N] [--read-ahead R ...]

Builds a ~256 MiB file from the first bytes of /usr/lib, /usr/share and /usr/bin (a realistic
mix, as limits.md §1 used), converts it to eStargz (4 MiB chunks, gzip -6) with our writer,
pushes it to a local `docker-registry`, then for each worker count reads the file cold (empty
LMDB, fresh workers) through `Remote.read` in 1 MiB reads, starting `Remote.read_ahead` after
each read. Prints MiB/s of decompressed file bytes per run. Wall-clock numbers on a shared VM are
noisy (limits §1: ±40 %); compare rows of one table only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from lazylayer.daemon.remote import FetchSettings  # noqa: E402
from lazylayer.shared.store.metadata import Metadata  # noqa: E402
from tests.support.fetchstack import ImageTree, open_fetch_stack, push_image_trees  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

MiB = 1 << 20
SOURCES = ("/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/bin")


def make_file(path: Path, size: int) -> None:
    """The first ``size`` bytes of the regular files under SOURCES, concatenated."""
    left = size
    with open(path, "wb") as out:
        for top in SOURCES:
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    if left <= 0:
                        return
                    if os.path.islink(full) or not os.path.isfile(full):
                        continue
                    try:
                        with open(full, "rb") as src:
                            data = src.read(left)
                    except OSError:
                        continue
                    out.write(data)
                    left -= len(data)
    if left > 0:
        raise SystemExit(f"only found {size - left} bytes of input under {SOURCES}")


async def cold_read(image, workdir: Path, workers: int, read_ahead: int) -> tuple[float, int, str]:
    settings = FetchSettings(read_ahead_chunks=read_ahead)
    async with open_fetch_stack(workdir, workers=workers, capacity=2, settings=settings) as s:
        record = await s.remote.resolve_layer(image.ref, image.layers[0].descriptor())
        meta = Metadata(s.store)
        node = meta.resolve(record.root, "data")
        size = meta.getattr(node).size
        digest = hashlib.sha256()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            offset = 0
            while offset < size:
                data = await s.remote.read(image.ref, record, node, size, offset, MiB)
                digest.update(data)
                offset += len(data)
                if read_ahead and offset < size:
                    nursery.start_soon(s.remote.read_ahead, image.ref, record, node, offset)
        elapsed = time.perf_counter() - start
        return size / MiB / elapsed, s.remote.stats.jobs, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--runs", type=int, default=2, help="cold runs per configuration (default 2)")
    parser.add_argument("--read-ahead", type=int, nargs="+", default=[2], help="read-ahead chunks (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ll-bench-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        tree.mkdir()
        make_file(tree / "data", args.size * MiB)
        expected = hashlib.sha256((tree / "data").read_bytes()).hexdigest()
        registry = start_registry(work)
        try:
            t0 = time.perf_counter()
            image = push_image_trees(registry, "bench/cold", "v1", [ImageTree(tree)], chunk_size=4 * MiB)
            blob = image.layers[0]
            print(f"input {args.size} MiB -> eStargz {blob.size / MiB:.1f} MiB "
                  f"(ratio {args.size * MiB / blob.size:.2f}), built and pushed in {time.perf_counter() - t0:.1f} s")
            print(f"{'workers':>7} {'read-ahead':>10} {'run':>3} {'MiB/s':>7} {'fetch jobs':>10}")
            for workers in (1, 2):
                for read_ahead in args.read_ahead:
                    for run in range(1, args.runs + 1):
                        rate, jobs, digest = trio.run(cold_read, image, work / f"w{workers}-r{read_ahead}-{run}",
                                                      workers, read_ahead)
                        assert digest == expected, "bytes read differ from the source file"
                        print(f"{workers:>7} {read_ahead:>10} {run:>3} {rate:>7.1f} {jobs:>10}")
        finally:
            registry.stop()


if __name__ == "__main__":
    main()
