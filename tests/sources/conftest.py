"""Fixtures for the blob-source tests: one registry and one daemon per module (no prefetch, no
background walk, no neighbours: only the reads a test makes fetch anything), a plain HTTP blob
server for descriptor `urls`, and the directory the `testdir` plug-in source serves
(tests/plugins/lazylayer_testplugin, installed by scripts/setup)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.blobsource import BytesSource
from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.support.blobserver import BlobServer
from tests.support.layers import BuiltLayer, build_layer, directory, file
from lazylayer.workers.registry.local import start_local_registry
from tests.support.fetchstack import NO_NEIGHBOURS
from tests.support.registry import OCI_CONFIG, OCI_MANIFEST, RunningRegistry, digest_of, push_blob, push_manifest

PLUGIN_ENV = "LLTESTPLUGIN_DIR"
#: refs under this repository prefix are served by the `testdir` plug-in, then the registry
PLUGIN_REPO = "plug/"
PAYLOAD = bytes(range(256)) * 800  # 200 KiB, one chunk at the default chunk size
FILES = [directory("app/"), file("app/readme.txt", b"lazy layers from anywhere\n"), file("app/payload.bin", PAYLOAD)]


def sample_layer() -> BuiltLayer:
    return build_layer(FILES)


def check_sample(diff: Path) -> None:
    assert (diff / "app/readme.txt").read_bytes() == b"lazy layers from anywhere\n"
    assert (diff / "app/payload.bin").read_bytes() == PAYLOAD


def fragile_layer() -> BuiltLayer:
    """A layer whose payload is random: stored deflate blocks, so a flipped byte is always a
    digest mismatch (never an inflate error first)."""
    return build_layer([directory("app/"), file("app/readme.txt", b"x\n"), file("app/payload.bin", os.urandom(100_000))])


def read_is_refused(daemon: RunningDaemon, diff: Path) -> None:
    """The corrupted file is EIO, its sibling still reads, and the daemon's log says why."""
    with pytest.raises(OSError) as caught:
        (diff / "app/payload.bin").read_bytes()
    assert caught.value.errno == errno.EIO
    assert (diff / "app/readme.txt").read_bytes() == b"x\n"
    digest = diff.parent.name
    assert any(digest in line and "digest mismatch" in line for line in daemon.log().splitlines())
    assert layer_status(daemon, digest)["error"]


def corrupted(blob: bytes, path: str = "app/payload.bin") -> bytes:
    """The blob with one byte flipped inside ``path``'s first chunk (footer and TOC intact)."""
    chunk = BlobReader.open(BytesSource(blob)).toc.chunks(path)[0]
    at = (chunk.blob_offset + chunk.blob_end) // 2
    return blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1:]


def config_blob(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def manifest_of(config: bytes, descriptors: list[dict]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
                       "layers": descriptors}).encode()


def push_descriptors(reg: RunningRegistry, repository: str, tag: str, descriptors: list[dict],
                     diff_ids: list[str]) -> str:
    """A manifest over layer descriptors as given (their blobs pushed, or not, by the caller)."""
    config = config_blob(diff_ids)
    push_blob(reg, repository, config)
    push_manifest(reg, repository, tag, manifest_of(config, descriptors), OCI_MANIFEST)
    return f"{reg.host}/{repository}:{tag}"


#: the registry refuses manifests with layer `urls` unless they are allowed
ALLOW_URLS = "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    local = start_local_registry(tmp_path_factory.mktemp("registry"), extra_yaml=ALLOW_URLS)
    running = RunningRegistry(local.host, local.process, local.root, local.scheme)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("plugin-blobs")
    old = os.environ.get(PLUGIN_ENV)
    os.environ[PLUGIN_ENV] = str(path)  # the daemon's workers inherit it
    try:
        yield path
    finally:
        if old is None:
            del os.environ[PLUGIN_ENV]
        else:
            os.environ[PLUGIN_ENV] = old


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, registry: RunningRegistry,
           plugin_dir: Path) -> Iterator[RunningDaemon]:
    config = {"prefetch": {"enabled": False}, "background": {"enabled": False}, "fuse": NO_NEIGHBOURS,
              "sources": {"rules": {f"{registry.host}/{PLUGIN_REPO}": ["testdir", "registry"]}}}
    running = start_daemon(tmp_path_factory.mktemp("daemon"), workers=1, config=config)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def blob_server() -> Iterator[BlobServer]:
    with BlobServer() as server:
        yield server


def layer_status(daemon: RunningDaemon, digest: str) -> dict:
    status = json.loads(daemon.cli("status", "--json").stdout)
    return next(l for l in status["layers"] if l["digest"] == digest)
