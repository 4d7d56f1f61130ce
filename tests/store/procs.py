"""Child processes for the multi-process store tests: ``python -m tests.store.procs ROLE ...``.

Each role opens the environment itself after exec, as every real process must. Chunk contents
are derived from (seed, index), so any process can check every byte it reads.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path

from lazylayer.shared.store import chunks as chunks_module
from lazylayer.shared.store.chunks import ChunkStore, chunk_key
from lazylayer.shared.store.env import StoreOptions, open_store

MiB = 1 << 20


def content(seed: int, index: int, base: int) -> bytes:
    """Deterministic bytes; sizes vary so chunks end inside and on part boundaries."""
    size = base + (index * 7919) % base
    return hashlib.shake_256(f"{seed}/{index}".encode()).digest(size)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def options(path: str, map_mib: int, budget_mib: int) -> StoreOptions:
    return StoreOptions(path, map_size=map_mib * MiB, chunk_budget=budget_mib * MiB)


def say(line: str) -> None:
    print(line, flush=True)


def writer(path: str, map_mib: str, budget_mib: str, seed: str, count: str, base: str) -> None:
    store = ChunkStore(open_store(options(path, int(map_mib), int(budget_mib))))
    for i in range(int(count)):
        data = content(int(seed), i, int(base))
        store.put(digest_of(data), data)
    say("done")


def reader(path: str, map_mib: str, budget_mib: str, seeds: str, count: str, base: str, stop_file: str) -> None:
    """Random whole and partial reads until stop_file exists, then every chunk must be there."""
    store = ChunkStore(open_store(options(path, int(map_mib), int(budget_mib)), readonly=True))
    expected = {
        chunk_key(digest_of(data)): data
        for seed in map(int, seeds.split(","))
        for data in (content(seed, i, int(base)) for i in range(int(count)))
    }
    keys = list(expected)
    rng = random.Random(1)
    hits = checked = 0
    while not Path(stop_file).exists():
        key = rng.choice(keys)
        data = expected[key]
        off = rng.randrange(len(data))
        size = rng.choice([1, 4096, MiB, len(data)])
        got = store.read(key, off, size)
        if got is not None:
            if got != data[off : off + size]:
                say(f"MISMATCH {key.hex()} {off} {size}")
                sys.exit(2)
            hits += 1
            checked += len(got)
    for key, data in expected.items():
        if store.read(key) != data:
            say(f"MISSING-OR-WRONG {key.hex()}")
            sys.exit(3)
        checked += len(data)
    say(json.dumps({"hits": hits, "bytes_checked": checked}))


def hold_read(path: str, map_mib: str, budget_mib: str) -> None:
    """Take a read txn and keep it until killed: a reader that dies holding its slot."""
    store = open_store(options(path, int(map_mib), int(budget_mib)), readonly=True)
    txn = store.env.begin()
    txn.stat(store.db("chunk_index"))
    say("ready")
    time.sleep(3600)


def hold_write(path: str, map_mib: str, budget_mib: str) -> None:
    """Hold the write lock until killed."""
    store = open_store(options(path, int(map_mib), int(budget_mib)))
    txn = store.env.begin(write=True)
    txn.put(b"held", b"1", db=store.db("meta"))
    say("locked")
    time.sleep(3600)


def die_mid_put(path: str, map_mib: str, budget_mib: str, seed: str, size_mib: str) -> None:
    """Start a multi-part put, stop after two parts are written inside the txn, wait to be killed."""

    def two_parts_then_wait(txn, db, key, data):  # type: ignore[no-untyped-def]
        for i in range(2):
            txn.put(key + chunks_module._PART_NO.pack(i), data[i * MiB : (i + 1) * MiB], db=db)
        say("mid")
        time.sleep(3600)

    chunks_module._put_parts = two_parts_then_wait
    store = ChunkStore(open_store(options(path, int(map_mib), int(budget_mib))))
    data = content(int(seed), 0, int(size_mib) * MiB)
    store.put(digest_of(data), data)


def bench_4k(path: str, map_mib: str, budget_mib: str, key_hex: str, chunk_size: str, reads: str) -> None:
    """Latency of one cached 4 KiB read (txn + get + slice copy) from a separate process."""
    store = ChunkStore(open_store(options(path, int(map_mib), int(budget_mib)), readonly=True))
    key = bytes.fromhex(key_hex)
    rng = random.Random(7)
    offsets = [rng.randrange(0, int(chunk_size) - 4096) // 4096 * 4096 for _ in range(int(reads))]
    samples = []
    for off in offsets:
        t0 = time.perf_counter_ns()
        got = store.read(key, off, 4096)
        samples.append(time.perf_counter_ns() - t0)
        if got is None or len(got) != 4096:
            sys.exit(4)
    samples.sort()
    say(json.dumps({"p50_us": samples[len(samples) // 2] / 1000, "p99_us": samples[len(samples) * 99 // 100] / 1000}))


def register(path: str, map_mib: str, budget_mib: str, blob_path: str, digest: str) -> None:
    """Register a layer and print its id and every visible path's node id."""
    from lazylayer.shared.blobsource import FileSource
    from lazylayer.shared.estargz.reader import BlobReader
    from lazylayer.shared.store.layers import Layers
    from lazylayer.shared.store.metadata import Metadata

    store = open_store(options(path, int(map_mib), int(budget_mib)))
    with FileSource(blob_path) as source:
        reader = BlobReader.open(source)
        record = Layers(store).register(digest, source.size, reader.toc, verified=True)
    meta = Metadata(store)
    ids: dict[str, int] = {}
    stack = [("", record.root)]
    while stack:
        prefix, ref = stack.pop()
        for name, child in meta.readdir(ref):
            path = prefix + name.decode()
            ids[path] = child.node_id
            attr = meta.getattr(child)
            if attr is not None and attr.is_dir:
                stack.append((path + "/", child))
    say(json.dumps({"layer_id": record.layer_id, "ids": ids}))


ROLES = {
    "register": register,
    "writer": writer,
    "reader": reader,
    "hold-read": hold_read,
    "hold-write": hold_write,
    "die-mid-put": die_mid_put,
    "bench-4k": bench_4k,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
