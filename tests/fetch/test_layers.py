"""Layer-level jobs end to end: TOC verification at resolve, prefetch, background fetch with the
blob digest check, check and refresh."""

from __future__ import annotations

from typing import Iterator

import pytest
import trio

from lazylayer.daemon.pieces import plan_pieces
from lazylayer.daemon.fetchsettings import FetchSettings
from lazylayer.daemon.remote import LayerDescriptor
from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import DigestMismatchError, NotFoundError, UnverifiedLayerError
from lazylayer.shared.estargz.formats import TAIL_SIZE
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.store.layers import Layers, LayerState
from lazylayer.shared.store.metadata import Metadata
from tests.ipc.harness import trio_test
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.fetchstack import (CHUNK_SIZE, QUIET, ImageTree, PushedImage, expected_files, open_fetch_stack,
                                      push_image_trees, read_path)

DEADLINE = 60
BAD_TOC = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def proxy(registry) -> Iterator[FaultProxy]:
    fault = FaultProxy(registry.host)
    yield fault
    fault.stop()


@pytest.fixture(scope="module")
def odd_images(registry, app_image, tmp_path_factory) -> dict[str, PushedImage]:
    """The app image's top tree pushed with a wrong TOC digest annotation, and without any."""
    root = app_image.layers[2].root
    return {
        "wrong-toc": push_image_trees(registry, "fetch/wrongtoc", "v1", [ImageTree(root, toc_digest=BAD_TOC)]),
        "no-annotation": push_image_trees(registry, "fetch/noanno", "v1", [ImageTree(root, annotate=False)]),
    }


@trio_test
async def test_toc_digest_mismatch_is_refused_and_nothing_registered(odd_images, tmp_path):
    image = odd_images["wrong-toc"]
    async with open_fetch_stack(tmp_path, workers=1) as s:
        with trio.fail_after(DEADLINE):
            with pytest.raises(DigestMismatchError, match="TOC"):
                await s.remote.resolve_layer(image.ref, image.layers[0].descriptor())
        assert Layers(s.store).all() == []


@trio_test
async def test_layer_without_toc_digest_is_refused_unless_unverified_is_allowed(odd_images, tmp_path):
    image = odd_images["no-annotation"]
    desc = image.layers[0].descriptor()
    assert desc.toc_digest is None
    async with open_fetch_stack(tmp_path / "strict", workers=1) as s:
        with trio.fail_after(DEADLINE):
            with pytest.raises(UnverifiedLayerError, match="no TOC digest annotation"):
                await s.remote.resolve_layer(image.ref, desc)
        assert Layers(s.store).all() == []
    async with open_fetch_stack(tmp_path / "lax", workers=1, settings=FetchSettings(allow_unverified=True)) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(image.ref, desc)
            assert not record.verified
            assert await read_path(s.remote, image.ref, record, "srv/two.txt") == b"22\n"


@trio_test
async def test_resolve_layer_is_idempotent_and_shared_by_concurrent_callers(app_image, tmp_path):
    desc = app_image.layers[0].descriptor()
    async with open_fetch_stack(tmp_path, workers=2) as s:
        records = []
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(lambda: _append(records, s.remote.resolve_layer(app_image.ref, desc)))
            again = await s.remote.resolve_layer(app_image.ref, desc)
        assert {r.layer_id for r in records} == {again.layer_id}
        assert len(Layers(s.store).all()) == 1


async def _append(out: list, awaitable) -> None:
    out.append(await awaitable)


@trio_test
async def test_prefetch_stores_exactly_the_landmark_range(app_image, tmp_path):
    with_list, without = app_image.layers[0], app_image.layers[1]
    async with open_fetch_stack(tmp_path, workers=2) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(app_image.ref, with_list.descriptor())
            assert record.prefetch_end == with_list.result.prefetch_size > 0
            wanted = Metadata(s.store).prefetch_chunks(record.layer_id, record.prefetch_end)
            assert {c.data_key for c in wanted}  # the prefetch list's files have payload
            fetched = await s.remote.prefetch(app_image.ref, record)
            assert fetched > 0
            assert s.remote.chunks.stats().chunks == len({c.data_key for c in wanted})
            assert all(s.remote.chunks.has(c.data_key) for c in wanted)
            after = Layers(s.store).require(record.digest)
            assert after.state is LayerState.READY and after.prefetch_size == record.prefetch_end
            files = expected_files(with_list.root)
            prefetch_jobs = s.remote.stats.jobs  # prefetch pieces are chunk jobs spread over the workers
            for path in with_list.prefetch:
                assert await read_path(s.remote, app_image.ref, after, path) == files[path]
            assert s.remote.stats.jobs == prefetch_jobs  # served from the prefetched chunks

            plain = await s.remote.resolve_layer(app_image.ref, without.descriptor())
            assert plain.prefetch_end == 0  # .no.prefetch.landmark
            assert await s.remote.prefetch(app_image.ref, plain) == 0
            assert Layers(s.store).require(plain.digest).state is LayerState.READY
            assert s.remote.chunks.stats().chunks == len({c.data_key for c in wanted})


def test_pieces_tile_the_blob_and_never_split_a_chunk(app_image):
    layer = app_image.layers[1]
    toc = BlobReader.open(BytesSource(layer.blob)).toc
    chunks = [c for e in toc.nodes() for c in toc.chunks(e.name)]
    for piece_size in (1, 4096, CHUNK_SIZE, len(layer.blob)):
        pieces = plan_pieces(chunks, len(layer.blob), piece_size)
        assert pieces[0].start == 0 and pieces[-1].end == len(layer.blob)
        assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
        assert sorted((c.blob_offset, c.inner_offset) for p in pieces for c in p.chunks) == \
            sorted((c.blob_offset, c.inner_offset) for c in chunks)
        assert all(p.start <= c.blob_offset and c.blob_end <= p.end for p in pieces for c in p.chunks)
    assert len(plan_pieces(chunks, len(layer.blob), CHUNK_SIZE)) > 3


@trio_test
async def test_background_fetch_completes_and_marks_the_layer_fetched(app_image, tmp_path):
    layer = app_image.layers[1]
    settings = FetchSettings(piece_size=50_000)
    async with open_fetch_stack(tmp_path, workers=2, settings=settings) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(app_image.ref, layer.descriptor())
            seen: list[tuple[int, int]] = []
            await s.remote.background_fetch(app_image.ref, record, lambda done, total: seen.append((done, total)))
            assert len(seen) > 3 and seen[-1] == (layer.size, layer.size)
            after = Layers(s.store).require(record.digest)
            assert after.state is LayerState.FETCHED and after.fetched_bytes >= layer.size
            files = expected_files(layer.root)
            for path, data in files.items():
                assert await read_path(s.remote, app_image.ref, after, path) == data
            assert s.remote.stats.jobs == 0  # every chunk came from the background walk
            await s.remote.background_fetch(app_image.ref, after)  # FETCHED: nothing to do


@trio_test
async def test_background_fetch_plans_nothing_while_a_read_is_waiting(app_image, proxy, tmp_path):
    """The walk does not even read the layer's chunk list while a foreground read is live (a
    container start needs that CPU); it starts once reads have been quiet (daemon/quietgate.py)."""
    layer = app_image.layers[1]
    ref = app_image.ref_via(proxy.host)
    async with open_fetch_stack(tmp_path, workers=2) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(ref, layer.descriptor())
            planned: list[int] = []
            chunk_list = s.remote.meta.prefetch_chunks
            s.remote.meta.prefetch_chunks = lambda *args: planned.append(1) or chunk_list(*args)
            proxy.add(Rule("hang", ranged=True))
            path, data = next(iter(expected_files(layer.root).items()))
            async with trio.open_nursery() as nursery:
                async def read() -> None:
                    assert await read_path(s.remote, ref, record, path) == data
                nursery.start_soon(read)
                await s.pool.wait_for(lambda status: status.foreground_active)
                nursery.start_soon(s.remote.background_fetch, ref, record)
                await trio.sleep(3 * QUIET)
                assert planned == []
                proxy.release()
            assert planned == [1] and Layers(s.store).require(record.digest).state is LayerState.FETCHED
    proxy.reset()


@trio_test
async def test_blob_digest_mismatch_marks_the_layer_failed_and_distrusts_its_chunks(app_image, proxy, tmp_path):
    layer = app_image.layers[1]
    ref = app_image.ref_via(proxy.host)
    async with open_fetch_stack(tmp_path, workers=1, settings=FetchSettings(piece_size=50_000)) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(ref, layer.descriptor())  # the worker knows the blob URL now
            # Flip blob byte 0: inside the first gzip member's header, outside every chunk, so
            # every chunk verifies and only the whole-blob digest can notice.
            proxy.add(Rule("corrupt", ranged=True))
            with pytest.raises(DigestMismatchError, match="blob of layer"):
                await s.remote.background_fetch(ref, record)
            assert any(seen.range and seen.range.startswith("bytes=0-") and seen.range != "bytes=0-0"
                       for seen in proxy.seen)
            after = Layers(s.store).require(record.digest)
            assert after.state is LayerState.FAILED and "blob digest mismatch" in after.last_error
            assert s.remote.chunks.stats().chunks == 0  # every chunk it gave us is gone


@trio_test
async def test_resolve_reads_the_tail_in_its_size_probe(app_image, proxy, tmp_path):
    """A layer resolve asks its blob for the tail that holds the footer (and a small TOC) in the
    probe that checks the blob's size: no 1-byte probe, no second read of the tail."""
    proxy.reset()
    async with open_fetch_stack(tmp_path, workers=1) as s:
        with trio.fail_after(DEADLINE):
            for layer in app_image.layers:
                proxy.reset()
                await s.remote.resolve_layer(app_image.ref_via(proxy.host), layer.descriptor())
                gets = [(seen.range, seen.status) for seen in proxy.seen if "/blobs/" + layer.digest in seen.path]
                start = max(0, layer.size - TAIL_SIZE)
                assert gets[0] == (f"bytes={start}-{layer.size - 1}", 206), gets
                assert len(gets) <= 2 and all(r != gets[0][0] for r, _ in gets[1:]), gets  # then only the TOC
    proxy.reset()


@trio_test
async def test_check_and_refresh_follow_expired_redirects(app_image, proxy, tmp_path):
    layer = app_image.layers[2]
    ref = app_image.ref_via(proxy.host)
    proxy.reset()
    proxy.redirect_blobs = True
    async with open_fetch_stack(tmp_path, workers=1) as s:
        with trio.fail_after(DEADLINE):
            record = await s.remote.resolve_layer(ref, layer.descriptor())
            await s.remote.check(ref, layer.descriptor())
            proxy.expire_redirects()
            await s.remote.check(ref, layer.descriptor())  # 403 on the old URL: resolved again
            assert any(seen.status == 403 for seen in proxy.seen)
            await s.remote.refresh(ref, layer.descriptor())
            assert await read_path(s.remote, ref, record, "srv/one.txt") == b"1\n"
            missing = LayerDescriptor("sha256:" + "1" * 64, 10, layer.descriptor().media_type)
            with pytest.raises(NotFoundError):
                await s.remote.check(ref, missing)
    proxy.reset()


@trio_test
async def test_background_walks_share_the_concurrency_and_bandwidth_caps(app_image, tmp_path):
    """Two layers walked at once with background.concurrency 1 never have two pieces in flight,
    and the walk is paced to background.bandwidth_limit (a lower bound on its duration, which a
    slow machine cannot break)."""
    first, second = app_image.layers[0], app_image.layers[1]
    limit = 400_000  # bytes/s
    settings = FetchSettings(piece_size=50_000, background_concurrency=1, bandwidth_limit=limit)
    async with open_fetch_stack(tmp_path, workers=2, settings=settings) as s:
        with trio.fail_after(DEADLINE):
            records = [await s.remote.resolve_layer(app_image.ref, l.descriptor()) for l in (first, second)]
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for record in records:
                    nursery.start_soon(s.remote.background_fetch, app_image.ref, record)
            elapsed = trio.current_time() - started
        assert s.remote.stats.background_peak == 1
        walked = first.size + second.size
        assert elapsed >= (walked - 50_000) / limit
        assert all(Layers(s.store).require(r.digest).state is LayerState.FETCHED for r in records)
