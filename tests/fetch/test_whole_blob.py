"""A registry that answers ranged reads with the whole blob (200): what arrives is kept (issue 18).

Before, each chunk fetch downloaded the whole blob, verified it, kept the few ranges it wanted
and threw the rest away, so reading a layer file by file downloaded the blob once per miss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import trio

from lazylayer.shared.errors import RegistryError
from lazylayer.shared.store.layers import Layers, LayerState
from lazylayer.shared.store.metadata import Metadata
from lazylayer.workers.wholeblob import ChunkStream
from tests.ipc.harness import trio_test
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.fetchstack import NO_NEIGHBOURS, expected_files, open_fetch_stack, read_path

DEADLINE = 60
LEAF = "opt/data/deep/a/b/c/leaf.txt"


def _ranged_gets(proxy: FaultProxy) -> list:
    return [s for s in proxy.seen if s.method == "GET" and "/blobs/" in s.path and s.range
            and s.range != "bytes=0-0"]


@trio_test
async def test_whole_blob_answer_stores_every_chunk_and_is_asked_for_once(app_image, proxy, tmp_path):
    ref = app_image.ref_via(proxy.host)
    layer = app_image.layers[1]  # many chunks over several files
    files = expected_files(layer.root)
    async with open_fetch_stack(tmp_path, workers=2, capacity=2) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(ref, layer.descriptor())
            proxy.seen.clear()
            proxy.add(Rule("full_body", times=None, ranged=True))
            assert await read_path(s.remote, ref, record, LEAF) == files[LEAF]
            assert [g.status for g in _ranged_gets(proxy)] == [200]
            # every other file, read at once over both workers while the blob may still stream,
            # is served from what that one answer carried: no request more
            read: dict[str, bytes] = {}

            async def one(path: str) -> None:
                read[path] = await read_path(s.remote, ref, record, path)

            async with trio.open_nursery() as nursery:
                for path in files:
                    nursery.start_soon(one, path)
            assert read == files
            assert len(_ranged_gets(proxy)) == 1
            assert Layers(s.store).get(layer.digest).state is LayerState.FETCHED  # blob digest checked


@trio_test
async def test_whole_blob_answer_of_the_wrong_length_is_refused_unread(app_image, proxy, tmp_path):
    ref = app_image.ref_via(proxy.host)
    layer = app_image.layers[1]
    async with open_fetch_stack(tmp_path, workers=1) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(ref, layer.descriptor())
            proxy.add(Rule("serve", times=None, method="GET", path=r"/blobs/", body=b"x" * (layer.size - 7)))
            with pytest.raises(RegistryError, match=f"{layer.size - 7}-byte body; the blob has {layer.size} bytes"):
                await read_path(s.remote, ref, record, LEAF)
            assert s.remote.chunks.stats().chunks == 0


@trio_test
async def test_read_is_served_once_its_bytes_passed_and_others_wait_for_the_stream(app_image, proxy, tmp_path):
    """The whole blob stalls right after the first file's chunk: that read is served anyway, a
    read of a later file waits for the stream (no second request) and, once the stream broke
    off, fetches its chunk anew."""
    ref = app_image.ref_via(proxy.host)
    layer = app_image.layers[0]  # etc/app.conf comes first in blob order (prefetch list)
    files = expected_files(layer.root)
    async with open_fetch_stack(tmp_path, workers=2, config={"fuse": NO_NEIGHBOURS}) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(ref, layer.descriptor())
            meta = Metadata(s.store)
            first_end = max(c.blob_end for c in meta.all_chunks(meta.resolve(record.root, "etc/app.conf")))
            proxy.seen.clear()
            proxy.add(Rule("stall", times=None, ranged=True, whole=True, after=first_end + 1))
            assert await read_path(s.remote, ref, record, "etc/app.conf") == files["etc/app.conf"]
            assert [g.status for g in _ranged_gets(proxy)] == [200], proxy.seen  # still stalled, yet served
            result: dict[str, bytes] = {}

            async def later() -> None:
                result["lib"] = await read_path(s.remote, ref, record, "usr/lib/libx.so.1")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(later)
                await trio.sleep(0.5)
                assert "lib" not in result and len(_ranged_gets(proxy)) == 1  # waiting, not asking
                proxy.release()  # the stream breaks off: the waiting read asks for its own range
            assert result["lib"] == files["usr/lib/libx.so.1"]
            assert [g.status for g in _ranged_gets(proxy)] == [200, 206]
            assert "broke off" in Layers(s.store).get(layer.digest).last_error


@dataclass(frozen=True)
class _Span:
    blob_offset: int
    blob_end: int


@pytest.mark.parametrize("piece", [1, 333, 4096, 1 << 20])
def test_chunk_stream_cuts_every_chunk_and_holds_one_at_a_time(piece):
    blob = random.Random(piece).randbytes(200_000)
    spans = [_Span(10, 100), _Span(100, 400), _Span(100, 400), _Span(1000, 50_000), _Span(60_000, 200_000)]
    got: list = []
    stream = ChunkStream(spans, got.extend)
    held = 0
    for offset in range(0, len(blob), piece):
        stream.feed(offset, blob[offset:offset + piece])
        held = max(held, len(stream._buffer))
    stream.flush()
    assert [(c, data) for c, data in got] == [(c, blob[c.blob_offset:c.blob_end])
                                            for c in sorted(spans, key=lambda c: (c.blob_offset, c.blob_end))]
    assert held <= 140_000 + piece  # the largest chunk and one piece, never the blob
