"""A fleet behind a pull-through cache (issue 18): origin bytes once per cluster, every byte verified.

Real parts only: the origin is a docker-registry, the mirror is Debian's docker-registry 2.8 in
proxy mode (`proxy: remoteurl:`), and a FaultProxy between the two forwards and counts what the
origin sends, to the mirror and to the hosts alike (the image is named through it). Three
`lazylayer daemon`s with separate caches use the mirror through ``[registry] mirrors``. The mirror starts cold: it answers the first ranged reads with 200 and the
whole blob while it fetches the blob for itself, which is what made each host download whole
blobs and the origin send 3-4x the blob.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.support.faultproxy import FaultProxy
from tests.support.fetchstack import ImageTree, PushedImage, push_image_trees
from tests.support.registry import RunningRegistry, start_registry

SMALL = "etc/app.conf"
BIG = "data/big.bin"
BIG_SIZE = 32 << 20
#: the rest of the layer, not read: the blob is what the cache fetches whole
REST_SIZE = 96 << 20


@pytest.fixture(scope="module")
def fleet_image(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> PushedImage:
    root = tmp_path_factory.mktemp("fleet-tree")
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_bytes(b"answer = 42\n")
    (root / "data").mkdir()
    rng = random.Random(18)
    # mostly incompressible: the blob is about as large as the file
    for path, size in ((BIG, BIG_SIZE), ("data/rest.bin", REST_SIZE)):
        (root / path).write_bytes(b"".join(rng.randbytes(3 << 10) + bytes(1 << 10) for _ in range(size >> 12)))
    for i in range(20):
        (root / f"etc/conf{i}.txt").write_bytes(b"setting %d\n" % i * 50)
    return push_image_trees(registry, "fleet/app", "v1", [ImageTree(root, level=1)], chunk_size=1 << 20)


@pytest.fixture
def counted_mirror(registry: RunningRegistry, tmp_path: Path) -> Iterator[tuple[FaultProxy, RunningRegistry]]:
    """A cold pull-through cache whose origin traffic passes a counting forwarder."""
    forwarder = FaultProxy(registry.host)
    mirror = start_registry(tmp_path, proxy_of=forwarder.url)
    try:
        yield forwarder, mirror
    finally:
        mirror.stop()
        forwarder.stop()


def _hosts(tmp_path: Path, mirror: RunningRegistry, origin: str, count: int) -> list[RunningDaemon]:
    config = {"registry": {"mirrors": {origin: [mirror.url]}, "max_retries": 2},
              "background": {"enabled": False}, "prefetch": {"enabled": False}}
    daemons: list[RunningDaemon] = []
    try:
        for i in range(count):
            daemons.append(start_daemon(tmp_path / f"host{i}", workers=2, config=config))
    except BaseException:
        for daemon in daemons:
            daemon.stop()
        raise
    return daemons


def _read(daemon: RunningDaemon, image: PushedImage, origin: str, path: str) -> bytes:
    layer = image.layers[0]
    return (daemon.layer_dir(image.ref_via(origin), layer.digest) / path).read_bytes()


def test_cluster_behind_a_cold_pull_through_cache_costs_the_origin_one_blob(
        registry: RunningRegistry, fleet_image: PushedImage, counted_mirror: tuple[FaultProxy, RunningRegistry],
        tmp_path: Path) -> None:
    forwarder, mirror = counted_mirror
    layer = fleet_image.layers[0]
    expected = {SMALL: (layer.root / SMALL).read_bytes(), BIG: (layer.root / BIG).read_bytes()}
    origin = forwarder.host
    daemons = _hosts(tmp_path, mirror, origin, 3)
    try:
        # host 1 first (the measurement), then the others at once
        for path in (SMALL, BIG):
            assert _read(daemons[0], fleet_image, origin, path) == expected[path]
        failures: list[BaseException] = []

        def host(daemon: RunningDaemon) -> None:
            try:
                for path in (SMALL, BIG):
                    assert _read(daemon, fleet_image, origin, path) == expected[path], path
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=host, args=(d,)) for d in daemons[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not failures, failures
        sent = forwarder.body_bytes("GET", f"/blobs/{layer.digest}")
        print(f"origin sent {sent / layer.size:.3f}x the {layer.size}-byte blob")
        assert sent <= 1.1 * layer.size, (
            f"the origin sent {sent / layer.size:.2f}x the blob: "
            + str([(s.method, s.range, s.status, s.bytes) for s in forwarder.seen if layer.digest in s.path]))
        # the late hosts read from the cache, once it had the blob (status shows what each learnt)
        for daemon in daemons[1:]:
            assert {"host": mirror.host, "state": "ranged", "strikes": 0, "retry_in": 0.0} in \
                daemon.call("status")["mirrors"]
    finally:
        for daemon in daemons:
            daemon.stop()
