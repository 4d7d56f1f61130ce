"""The cache never serves a corrupted byte and never takes the daemon down: flipped chunk bytes
are found and refetched, a garbage record is EIO for its file, a truncated data.mdb is set aside,
and a full cache filesystem still serves every read."""

from __future__ import annotations

import errno
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import Layers
from lazylayer.shared.store.metadata import Metadata
from lazylayer.workers.registry.local import free_port
from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.ops.test_daemon_ops import scrape
from tests.support.layers import build_layer, directory, file
from tests.support.registry import Layer, RunningRegistry, push_image

MiB = 1 << 20
QUIET = {"background": {"enabled": False}}  # only the reads under test fetch anything


def _push(registry: RunningRegistry, name: str, files: dict[str, bytes], chunk_size: int = 1 * MiB) -> str:
    built = build_layer([directory("data/"), *[file(f"data/{n}", d) for n, d in files.items()]],
                        chunk_size=chunk_size)
    push_image(registry, f"integrity/{name}", "v1",
               [Layer(built.blob, annotations=dict(built.result.annotations()), diff_id=built.result.diff_id)])
    return f"{registry.host}/integrity/{name}:v1"


def _files(seed: int, count: int, size: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"f{i:02d}": rng.randbytes(size) for i in range(count)}


def _diff(daemon: RunningDaemon, ref: str) -> Path:
    layer = daemon.call("image", {"ref": ref})["layers"][0]
    return Path(layer["path"])


def _warm_cache(registry: RunningRegistry, tmp_path: Path, name: str, files: dict[str, bytes],
                config: dict = QUIET) -> tuple[str, RunningDaemon]:
    """Push ``files`` as an image and read each through a daemon, then stop it: a warm cache
    in ``tmp_path``/d for the test to damage. Returns the ref and the stopped daemon."""
    ref = _push(registry, name, files)
    daemon = start_daemon(tmp_path / "d", workers=1, config=config)
    try:
        diff = _diff(daemon, ref)
        for file_name, data in files.items():
            assert _read_cold(diff / "data" / file_name) == data
    finally:
        daemon.stop()
    return ref, daemon


def _read_cold(path: Path) -> bytes:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return f.read()


def test_flipped_chunk_bytes_are_refetched_not_served(registry: RunningRegistry, tmp_path: Path):
    files = _files(1, 2, 600_000)
    port = free_port()
    config = {**QUIET, "metrics": {"address": f"127.0.0.1:{port}"}}
    ref, daemon = _warm_cache(registry, tmp_path, "flip", files, config)
    data = daemon.cache_dir / "data.mdb"
    raw = bytearray(data.read_bytes())
    where = raw.find(files["f00"][1000:1064])
    assert where > 0, "the chunk's bytes are in data.mdb"
    raw[where] ^= 0xFF
    data.write_bytes(raw)

    daemon = start_daemon(tmp_path / "d", workers=1, config=config)
    try:
        for _ in range(3):  # the first read finds and replaces it; none returns a wrong byte
            assert _read_cold(_diff(daemon, ref) / "data/f00") == files["f00"]
        assert scrape(port)["lazylayer_cache_corrupt_chunks_total"] == 1
        assert "do not match their digest" in daemon.log()
    finally:
        daemon.stop()
    assert files["f00"][1000:1064] in data.read_bytes()  # the good bytes were stored again


def test_a_garbage_record_is_eio_for_its_file_and_the_daemon_serves_on(registry: RunningRegistry, tmp_path: Path):
    files = _files(2, 2, 1000)
    ref, daemon = _warm_cache(registry, tmp_path, "garbage", files)
    with open_store(StoreOptions(str(daemon.cache_dir), map_size=4 << 30)) as store:
        meta = Metadata(store)
        (record,) = Layers(store).all()
        victim = meta.lookup(meta.lookup(record.root, b"data"), b"f01")
        key = struct.pack(">II", *victim)  # the nodes table's key: (layer id, node id)
        assert store.read(lambda txn: txn.get(key, db=store.db("nodes"))) is not None
        store.write(lambda txn: txn.put(key, b"\xc1\xc1 not msgpack", db=store.db("nodes")))

    daemon = start_daemon(tmp_path / "d", workers=1, config=QUIET)
    try:
        diff = _diff(daemon, ref)
        with pytest.raises(OSError) as raised:
            os.stat(diff / "data/f01")
        assert raised.value.errno == errno.EIO
        assert (diff / "data/f00").read_bytes() == files["f00"]  # the rest of the layer is fine
        assert daemon.process.poll() is None
        assert "does not decode" in daemon.log()
    finally:
        daemon.stop()


def test_a_truncated_cache_is_set_aside_and_rebuilt(registry: RunningRegistry, tmp_path: Path):
    files = _files(3, 4, 700_000)
    ref, daemon = _warm_cache(registry, tmp_path, "truncated", files)
    data = daemon.cache_dir / "data.mdb"
    os.truncate(data, data.stat().st_size // 3)

    daemon = start_daemon(tmp_path / "d", workers=1, config=QUIET)
    try:
        diff = _diff(daemon, ref)
        for name, expected in files.items():
            assert _read_cold(diff / "data" / name) == expected
        assert "is damaged" in daemon.log() and "truncated" in daemon.log()
        assert list(daemon.cache_dir.glob("damaged-*/data.mdb"))
    finally:
        daemon.stop()


@pytest.mark.parametrize("fs_size, chunk_size, said", [
    ("16m", 1 * MiB, "evicted to make room"),  # eviction frees pages the next chunks reuse
    ("3m", 4 * MiB, "reads are served without caching"),  # no chunk fits at all: served from the reply
])
def test_a_full_cache_filesystem_still_serves_every_read(registry: RunningRegistry, tmp_path: Path,
                                                         fs_size: str, chunk_size: int, said: str):
    files = _files(4, 12, 4 * MiB)  # 48 MiB of incompressible data into a much smaller filesystem
    ref = _push(registry, f"full-{fs_size}", files, chunk_size)
    cache = tmp_path / "d" / "cache"
    cache.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={fs_size}", "tmpfs", str(cache)], check=True)
    try:
        daemon = start_daemon(tmp_path / "d", workers=1,
                              config={"cache": {"map_size": 8 << 30, "max_size": 3 << 30}})
        try:
            diff = _diff(daemon, ref)
            for _ in range(2):
                for name, expected in files.items():
                    assert _read_cold(diff / "data" / name) == expected, name
            assert "the cache filesystem refused a write" in daemon.log() and said in daemon.log()
            assert daemon.process.poll() is None
        finally:
            daemon.stop()
    finally:
        subprocess.run(["umount", "-l", str(cache)])
