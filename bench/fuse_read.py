"""Reads through the real FUSE mount against their plain counterparts, all in one run:

1. cold sequential read of a 256 MiB file (empty cache, 2 workers, 1 MiB reads)
   vs ONE HTTP GET of the same blob range + gunzip of its members;
2. warm re-read (kernel page cache, keep_cache) and warm from LMDB (page cache dropped)
   vs the same file on local disk (page cache warm / dropped);
3. time to first byte of a small file in that large layer (fresh daemon, empty cache: manifest,
   footer + TOC, one chunk) vs downloading the whole layer, gunzip and untar.

    .venv/bin/python bench/fuse_read.py [--size MiB]

Needs root and /dev/fuse. The input is the first bytes of /usr/lib, /usr/share, /usr/bin (as
limits.md §1 and bench/cold_workers.py). Wall-clock figures on a shared 2-vCPU VM are noisy
(limits §1: +-40 %): compare rows of one run only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.* helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the input maker of cold_workers.py

from cold_workers import MiB, make_file  # noqa: E402
from lazylayer.shared.estargz.reader import BlobReader  # noqa: E402
from lazylayer.shared.blobsource import BytesSource  # noqa: E402
from tests.fuse.daemonproc import RunningDaemon, start_daemon  # noqa: E402
from tests.support.fetchstack import ImageTree, PushedImage, push_image_trees  # noqa: E402
from tests.support.registry import start_registry  # noqa: E402

QUIET = {"prefetch": {"enabled": False}, "background": {"enabled": False}}
READ = MiB


def read_all(path: Path) -> float:
    """Seconds to read ``path`` sequentially in 1 MiB reads into one buffer (no hashing in the
    timed loop: sha256 runs at about the page-cache speed and would hide the difference)."""
    buf = bytearray(READ)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def gunzip(data: bytes, sink: Callable[[bytes], object]) -> None:
    """Decompress concatenated gzip members (eStargz has one per chunk), fed in 64 KiB pieces
    so a member boundary never copies the rest of the input."""
    view, pos = memoryview(data), 0
    d = zlib.decompressobj(31)
    while pos < len(view):
        piece: bytes | memoryview = view[pos:pos + 65536]
        pos += len(piece)
        while piece:
            sink(d.decompress(piece))
            if d.eof:
                piece, d = d.unused_data, zlib.decompressobj(31)
            else:
                piece = b""


def http_get(url: str, byte_range: tuple[int, int] | None = None) -> bytes:
    headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"} if byte_range else {}
    with requests.get(url, headers=headers, stream=True, timeout=300) as response:
        response.raise_for_status()
        return response.raw.read()  # urllib3 underneath: the fast path (limits §5.2)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="file size in MiB (default 256)")
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ll-fusebench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        tree.mkdir()
        make_file(tree / "data", args.size * MiB)
        (tree / "small.txt").write_bytes(b"first byte, please\n")
        expected = hashlib.sha256((tree / "data").read_bytes()).hexdigest()
        registry = start_registry(work)
        daemons: list[RunningDaemon] = []
        try:
            image: PushedImage = push_image_trees(registry, "bench/fuse", "v1", [ImageTree(tree)], chunk_size=4 * MiB)
            layer = image.layers[0]
            blob_url = f"{registry.url}/v2/bench/fuse/blobs/{layer.digest}"
            reader = BlobReader.open(BytesSource(layer.blob))
            chunks = reader.toc.chunks("data")
            span = (chunks[0].blob_offset, chunks[-1].blob_end)
            print(f"input {args.size} MiB -> eStargz {layer.size / MiB:.1f} MiB, {len(chunks)} chunks of 4 MiB")

            # 1. cold sequential read vs one GET + gunzip of the same range
            daemons.append(start_daemon(work / "cold", workers=2, config=QUIET))
            diff = daemons[-1].layer_dir(image.ref, layer.digest)
            os.stat(diff)  # resolve (manifest, footer + TOC) outside the timed read
            cold = read_all(diff / "data")
            assert sha256_of(diff / "data") == expected, "bytes read through FUSE differ from the source"
            get_gunzip = timed(lambda: gunzip(http_get(blob_url, span), len))
            rows.append(("cold sequential read vs 1 GET + gunzip", cold, get_gunzip))

            # 2. warm: page cache, then LMDB (page cache dropped), vs local disk
            warm_pc = read_all(diff / "data")
            drop_page_cache(diff / "data")
            warm_lmdb = read_all(diff / "data")
            local = tree / "data"
            read_all(local)
            local_pc = read_all(local)
            drop_page_cache(local)
            local_cold = read_all(local)
            rows.append(("warm re-read (page cache) vs local disk (page cache)", warm_pc, local_pc))
            rows.append(("warm from LMDB (page cache dropped) vs local disk (dropped)", warm_lmdb, local_cold))
            daemons[-1].stop()

            # 3. first byte of a small file in the large layer vs pulling the whole layer
            daemons.append(start_daemon(work / "ttfb", workers=2, config=QUIET))
            small = daemons[-1].layer_dir(image.ref, layer.digest) / "small.txt"

            def first_byte() -> None:
                with open(small, "rb") as f:
                    assert f.read(1) == b"f"

            ttfb = timed(first_byte)
            out = work / "untarred"

            def pull_whole() -> None:
                raw = bytearray()
                gunzip(http_get(blob_url), raw.extend)
                with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                    tar.extractall(out, filter="data")

            pull = timed(pull_whole)
            assert (out / "small.txt").read_bytes() == b"first byte, please\n"
            rows.append(("first byte of a small file vs download + gunzip + untar of the layer", ttfb, pull))
        finally:
            for daemon in daemons:
                daemon.stop()
            registry.stop()
            shutil.rmtree(work / "untarred", ignore_errors=True)
    size = args.size
    print(f"\n{'measurement':<72} {'lazylayer':>10} {'baseline':>10} {'ratio':>7}")
    for name, ours, theirs in rows:
        print(f"{name:<72} {ours:>9.3f}s {theirs:>9.3f}s {ours / theirs:>7.2f}")
    print(f"\n(throughput of the {size} MiB file: cold {size / rows[0][1]:.0f} MiB/s vs {size / rows[0][2]:.0f}; "
          f"warm page cache {size / rows[1][1]:.0f} vs {size / rows[1][2]:.0f}; "
          f"LMDB {size / rows[2][1]:.0f} vs {size / rows[2][2]:.0f} MiB/s; ratio = lazylayer time / baseline time)")


if __name__ == "__main__":
    main()
