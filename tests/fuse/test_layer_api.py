"""The seed's Layer/Resolver semantics (reference §2.1-2.2) over real workers and a real
registry, without FUSE: shared concurrent resolves, verification gating the root, prefetch-time
content errors failing verify, TTL eviction only without references, a failed check dropping
the cached entry, refresh."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from lazylayer.daemon.layer import Layer, Resolver, ResolverSettings
from lazylayer.shared.errors import CacheError, DigestMismatchError, LazyLayerError
from lazylayer.shared.store.metadata import Metadata
from tests.ipc.harness import trio_test
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.fetchstack import ImageTree, PushedImage, open_fetch_stack, push_image_trees

NO_FETCHES = ResolverSettings(prefetch=False, background=False, check_interval=0.0)


@trio_test
async def test_concurrent_resolves_share_one_layer_and_verification_gates_the_root(app_image: PushedImage,
                                                                                   tmp_path: Path):
    async with open_fetch_stack(tmp_path, workers=1) as s:
        resolver = Resolver(s.remote, NO_FETCHES)
        desc = app_image.layers[0].descriptor()
        got: list[Layer] = []
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lambda: _append(got, resolver.resolve(app_image.ref, desc)))
        assert got[0] is got[1] is got[2] and got[0].refs == 3 and got[0].verified
        assert got[0].root_node() == got[0].record.root
        # A fresh Layer object over the same record: no root until verified.
        fresh = Layer(s.remote, app_image.ref, desc, got[0].record, NO_FETCHES)
        with pytest.raises(CacheError):
            fresh.root_node()
        with pytest.raises(DigestMismatchError):
            fresh.verify("sha256:" + "1" * 64)
        fresh.verify(app_image.layers[0].toc_digest)
        assert fresh.root_node() == got[0].record.root
        info = fresh.info()
        assert (info.digest, info.size, info.toc_digest) == (desc.digest, desc.size, app_image.layers[0].toc_digest)


async def _append(out: list[Layer], coro) -> None:
    out.append(await coro)


@trio_test
async def test_eviction_after_ttl_only_without_references(app_image: PushedImage, tmp_path: Path):
    async with open_fetch_stack(tmp_path, workers=1) as s:
        resolver = Resolver(s.remote, ResolverSettings(prefetch=False, background=False, entry_ttl=0.1))
        layer = await resolver.resolve(app_image.ref, app_image.layers[2].descriptor())
        await trio.sleep(0.2)
        assert resolver.evict_idle() == [] and not layer.closed  # still referenced
        layer.done()
        await trio.sleep(0.2)
        assert resolver.evict_idle() == [layer] and layer.closed and resolver.layers() == []
        # Reads by id re-resolve an evicted layer from the last ref it came through.
        again = await resolver.layer_for(layer.layer_id)
        assert again is not layer and again.layer_id == layer.layer_id and not again.closed


@trio_test
async def test_failed_check_drops_the_entry_and_refresh_keeps_the_blob(app_image: PushedImage, registry,
                                                                       tmp_path: Path):
    proxy = FaultProxy(registry.host)
    try:
        ref = app_image.ref_via(proxy.host)
        desc = app_image.layers[1].descriptor()
        async with open_fetch_stack(tmp_path, workers=1) as s:
            resolver = Resolver(s.remote, NO_FETCHES)
            first = await resolver.resolve(ref, desc)
            await first.refresh()
            with pytest.raises(CacheError):
                await first.refresh(desc=type(desc)(desc.digest, desc.size + 1, desc.media_type, desc.annotations))
            rule = proxy.add(Rule("status", times=None, status=404))
            with pytest.raises(LazyLayerError):
                await first.check()
            proxy.rules.remove(rule)
            assert (await resolver.resolve(ref, desc)) is first  # check passes again: same entry
            proxy.add(Rule("status", times=1, status=404))
            second = await resolver.resolve(ref, desc)  # check fails once: entry dropped, resolved anew
            assert second is not first and first.closed and second.verified
    finally:
        proxy.stop()


def push_bad_prefetch_image(registry, tmp_path: Path, repository: str) -> tuple[PushedImage, bytes]:
    """An image whose landmark range holds hot.bin with 64 corrupt compressed bytes; cold.txt
    lies outside it. Returns the image and hot.bin's true content."""
    root = tmp_path / "tree"
    root.mkdir()
    payload = random.Random(repository).randbytes(100_000)
    (root / "hot.bin").write_bytes(payload)
    (root / "cold.txt").write_bytes(b"cold\n")
    image = push_image_trees(registry, repository, "v1",
                             [ImageTree(root, prefetch=("hot.bin",), level=0, corrupt=payload[500:564])])
    return image, payload


@trio_test
async def test_prefetch_content_error_fails_verify(registry, tmp_path: Path):
    image, _ = push_bad_prefetch_image(registry, tmp_path, "fuse/badprefetch")
    async with open_fetch_stack(tmp_path / "stack", workers=1) as s:
        waiting = ResolverSettings(prefetch=True, prefetch_timeout=10.0, background=False)
        resolver = Resolver(s.remote, waiting)
        async with trio.open_nursery() as nursery:
            await nursery.start(resolver.run)
            with pytest.raises(DigestMismatchError) as caught:
                await resolver.resolve(image.ref, image.layers[0].descriptor())
            assert image.layers[0].digest in str(caught.value)
            assert resolver.layers() == [] and image.layers[0].digest in next(iter(resolver.failures))
            nursery.cancel_scope.cancel()


@trio_test
async def test_by_default_a_resolve_does_not_wait_for_prefetch_and_bad_content_is_never_served(
        registry, tmp_path: Path):
    """As upstream's stargz-store: the layer is served once registered and verified; what the
    prefetch meets later fails its own chunks' reads and is the layer's last error."""
    image, payload = push_bad_prefetch_image(registry, tmp_path, "fuse/latebadprefetch")
    async with open_fetch_stack(tmp_path / "stack", workers=1) as s:
        resolver = Resolver(s.remote, ResolverSettings(prefetch=True, background=False))
        assert resolver.settings.prefetch_timeout == 0.0
        async with trio.open_nursery() as nursery:
            await nursery.start(resolver.run)
            layer = await resolver.resolve(image.ref, image.layers[0].descriptor())
            assert layer.verified and not await layer.wait_for_prefetch_completion(0.0)
            assert await layer.wait_for_prefetch_completion(10.0)  # now it has met the bad bytes
            assert layer.digest in layer.error() or "sha256" in layer.error()
            meta = Metadata(s.store)
            with pytest.raises(LazyLayerError):
                await layer.read(meta.resolve(layer.root_node(), "hot.bin"), len(payload), 0, len(payload))
            assert await layer.read(meta.resolve(layer.root_node(), "cold.txt"), 5, 0, 5) == b"cold\n"
            nursery.cancel_scope.cancel()


@trio_test
async def test_a_layer_registered_for_a_resolve_is_not_probed_again_within_the_interval(
        app_image: PushedImage, registry, tmp_path: Path):
    """The registration reached the blob: the lookups that follow (podman's, after the layers
    were resolved ahead) ask nothing of the registry for ``check_interval``. A layer registered
    earlier (another daemon, a restart) is still checked on its next resolve."""
    proxy = FaultProxy(registry.host)
    try:
        ref = app_image.ref_via(proxy.host)
        desc = app_image.layers[1].descriptor()
        settings = ResolverSettings(prefetch=False, background=False, check_interval=60.0)
        async with open_fetch_stack(tmp_path, workers=1) as s:
            resolver = Resolver(s.remote, settings)
            first = await resolver.resolve(ref, desc)
            seen = len(proxy.seen)
            for _ in range(3):
                assert (await resolver.resolve(ref, desc)) is first
            assert proxy.seen[seen:] == []
            restarted = Resolver(s.remote, settings)  # the record is in the store already
            again = await restarted.resolve(ref, desc)
            seen = len(proxy.seen)
            assert (await restarted.resolve(ref, desc)) is again
            assert [x.status for x in proxy.seen[seen:]] == [206]  # the 1-byte check
    finally:
        proxy.stop()
