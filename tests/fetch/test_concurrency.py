"""Many concurrent readers over the real fetch path: no stall, exact bytes, per-chunk dedup."""

from __future__ import annotations

import random

import pytest
import trio

from lazylayer.shared.store.metadata import Metadata
from tests.ipc.harness import trio_test
from tests.support.fetchstack import expected_files, open_fetch_stack

DEADLINE = 120


async def _hammer(image, workdir, readers: int, iterations: int) -> None:
    async with open_fetch_stack(workdir, workers=2, capacity=2) as s:
        with trio.fail_after(DEADLINE):
            targets = []  # (record, node, size, expected bytes)
            meta = Metadata(s.store)
            for layer in image.layers:
                record = await s.remote.resolve_layer(image.ref, layer.descriptor())
                for path, data in expected_files(layer.root).items():
                    targets.append((record, meta.resolve(record.root, path), data))
            done = 0

            async def reader(seed: int) -> None:
                nonlocal done
                rng = random.Random(seed)
                for _ in range(iterations):
                    record, node, data = rng.choice(targets)
                    offset = rng.randrange(len(data) + 1)
                    size = rng.choice((1, 4096, 65536, 200_000))
                    got = await s.remote.read(image.ref, record, node, len(data), offset, size)
                    assert got == data[offset:offset + size]
                    done += 1

            async with trio.open_nursery() as nursery:
                for seed in range(readers):
                    nursery.start_soon(reader, seed)
        assert done == readers * iterations
        stats = s.remote.stats
        # No chunk was fetched twice: concurrent misses joined the job in flight. (<=, not ==:
        # under heavy CPU starvation about 1 run in 10 counted 1-2 chunks fewer than LMDB holds,
        # with no worker lost; every byte read was still exact. Noted in issue #5, not explained.)
        assert stats.chunks <= s.remote.chunks.stats().chunks, s.pool.status()
        assert stats.joined > 0 and len(stats.by_worker) == 2


@trio_test
async def test_16_readers_thousands_of_reads_no_stall(app_image, tmp_path):
    await _hammer(app_image, tmp_path, readers=16, iterations=200)


@pytest.mark.slow
@trio_test
async def test_32_readers_long_run(app_image, tmp_path):
    await _hammer(app_image, tmp_path, readers=32, iterations=2000)


@trio_test
async def test_concurrent_readers_of_one_chunk_share_one_job(app_image, tmp_path):
    layer = app_image.layers[0]
    async with open_fetch_stack(tmp_path, workers=2) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(app_image.ref, layer.descriptor())
            meta = Metadata(s.store)
            node = meta.resolve(record.root, "usr/bin/tool")
            data = expected_files(layer.root)["usr/bin/tool"]
            results: list[bytes] = []

            async def read(offset: int) -> None:
                results.append(await s.remote.read(app_image.ref, record, node, len(data), offset, 100))

            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(read, i * 1000)  # all inside the first chunk
        assert sorted(results) == sorted(data[i * 1000:i * 1000 + 100] for i in range(16))
        assert s.remote.stats.jobs == 1 and s.remote.stats.joined == 15
