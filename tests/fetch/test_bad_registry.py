"""A registry that stalls, never ends a body, or hangs (issue 15 items 1 and 5), through the fault
proxy in front of a real registry, with a second real registry that stays healthy:
each bad read fails on its own within the request timeout, the same workers keep serving the
other registry meanwhile, the bad registry is read again within the request timeout of its fix,
and a hung registry is asked once per failed read."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import trio

from lazylayer.shared.errors import LazyLayerError, RegistryError
from tests.ipc.harness import trio_test
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.fetchstack import ImageTree, PushedImage, expected_files, open_fetch_stack, push_image_trees, read_path
from tests.support.registry import RunningRegistry, start_registry

#: workers.request_timeout: what a read may cost [s]
TIMEOUT = 2.0
#: scheduling slack on top of a limit [s]
SLACK = 1.5
#: one worker of capacity 2: without per-registry slots, two stalled reads would fill it
CONFIG = {"workers": {"request_timeout": TIMEOUT},
          "registry": {"request_timeout": 1.0, "max_retries": 2, "max_backoff": 0.5},
          "background": {"enabled": False}}
A_FILES = ("usr/bin/tool", "usr/lib/libx.so.1", "usr/share/doc/README")




@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A second registry instance, never behind the proxy."""
    reg = start_registry(tmp_path_factory.mktemp("healthy"))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def other_image(healthy: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    root = tmp_path_factory.mktemp("other") / "tree"
    (root / "data").mkdir(parents=True)
    (root / "data/one.bin").write_bytes(os.urandom(200 << 10))
    (root / "data/two.bin").write_bytes(os.urandom(100 << 10))
    return push_image_trees(healthy, "fetch/other", "v1", [ImageTree(root)])


def _ranged(proxy: FaultProxy) -> list:
    return [s for s in proxy.seen if s.method == "GET" and s.range and s.range != "bytes=0-0"]


async def _fails_within(coro, limit: float, match: str) -> str:
    started = trio.current_time()
    with pytest.raises(RegistryError, match=match) as caught:
        await coro
    assert trio.current_time() - started < limit, str(caught.value)
    return str(caught.value)


@trio_test
async def test_stalled_registry_costs_only_its_own_reads_and_recovers(app_image, other_image, proxy, tmp_path):
    ref_a, ref_b = app_image.ref_via(proxy.host), other_image.ref
    async with open_fetch_stack(tmp_path, workers=1, capacity=2, config=CONFIG) as s:
        with trio.fail_after(60):
            layer_a = await s.remote.resolve_layer(ref_a, app_image.layers[0].descriptor())
            layer_b = await s.remote.resolve_layer(ref_b, other_image.layers[0].descriptor())
            proxy.add(Rule("stall", ranged=True, times=None, after=10))
            errors: list[str] = []

            async def bad_read(path: str) -> None:
                errors.append(await _fails_within(read_path(s.remote, ref_a, layer_a, path), TIMEOUT + SLACK,
                                                  r"stalled|not complete after 10 bytes|not asked again"))

            async with trio.open_nursery() as nursery:
                for path in A_FILES:
                    nursery.start_soon(bad_read, path)
                while not _ranged(proxy):
                    await trio.sleep(0.01)
                # (b) the stalled registry holds its own slots; the other registry's cold read
                # goes through the same worker meanwhile.
                started = trio.current_time()
                other = expected_files(other_image.layers[0].root)
                for path in ("data/one.bin", "data/two.bin"):
                    assert await read_path(s.remote, ref_b, layer_b, path) == other[path]
                assert trio.current_time() - started < TIMEOUT
            # (a) each read failed on its own with the stall named (or the pause that followed it)
            assert any("the body stalled: no byte for 1 s after 10 bytes; cut off" in e for e in errors), errors
            # (c) fixed: readable again within the request timeout, with no restart
            proxy.release()
            fixed = trio.current_time()
            expected = expected_files(app_image.layers[0].root)
            while True:
                try:
                    data = await read_path(s.remote, ref_a, layer_a, A_FILES[0])
                    break
                except LazyLayerError:
                    await trio.sleep(0.1)
            assert data == expected[A_FILES[0]]
            assert trio.current_time() - fixed < TIMEOUT + SLACK
            assert s.pool.status().workers_lost == 0


@trio_test
async def test_endless_body_is_cut_off_at_the_blob_size(app_image, proxy, tmp_path):
    ref = app_image.ref_via(proxy.host)
    async with open_fetch_stack(tmp_path, workers=1, capacity=2, config=CONFIG) as s:
        with trio.fail_after(60):
            layer = await s.remote.resolve_layer(ref, app_image.layers[0].descriptor())
            proxy.add(Rule("endless", ranged=True))
            size = app_image.layers[0].size
            await _fails_within(read_path(s.remote, ref, layer, A_FILES[1]), TIMEOUT + SLACK,
                                rf"the body goes on past the {size} bytes it can have; cut off")


@trio_test
async def test_hung_registry_is_an_error_within_the_timeout_and_asked_once(app_image, proxy, tmp_path):
    """Item 5: registry.request_timeout (30 s) is longer than the read's budget (2 s): the read
    still fails within its budget, the request is not retried, and an immediate retry of the
    same read (what the kernel does after a failed readahead) does not ask the registry again."""
    ref = app_image.ref_via(proxy.host)
    config = {**CONFIG, "registry": {**CONFIG["registry"], "request_timeout": 30.0}}
    async with open_fetch_stack(tmp_path, workers=2, capacity=1, config=config) as s:
        with trio.fail_after(60):
            layer = await s.remote.resolve_layer(ref, app_image.layers[0].descriptor())
            proxy.add(Rule("hang", ranged=True, times=None))
            await _fails_within(read_path(s.remote, ref, layer, A_FILES[1]), TIMEOUT + SLACK,
                                rf"{proxy.host} accepted the connection but sent no answer within 1\.\d+ s")
            await _fails_within(read_path(s.remote, ref, layer, A_FILES[1]), 0.5, "not asked again")
            assert len(_ranged(proxy)) == 1
