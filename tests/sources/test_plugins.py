"""Plug-ins from entry points, end to end: the `testdir` source and the `rawchunk` decompressor
of tests/plugins/lazylayer_testplugin (installed into the venv by scripts/setup) serve a layer
the registry has no copy of, in a format lazylayer does not know, through the FUSE mount; wrong
bytes from the plug-in source, or a plug-in's wrong output, are refused like a registry's."""

from __future__ import annotations

import os
from pathlib import Path

import requests
from lazylayer_testplugin.rawchunk import MEDIA_TYPE, write_blob

from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION
from tests.fuse.daemonproc import RunningDaemon
from tests.sources.conftest import (PLUGIN_REPO, corrupted, fragile_layer, layer_status, push_descriptors,
                                    read_is_refused)
from tests.support.registry import RunningRegistry, digest_of, push_blob

FILES = {"hello.txt": b"hello from a plug-in\n", "data/big.bin": os.urandom(300_000)}


def push_only_to_plugin(registry: RunningRegistry, plugin_dir: Path, repository: str, blob: bytes,
                        media_type: str, annotations: dict[str, str], diff_id: str, served: bytes) -> str:
    """An image whose layer the registry had and lost (deleted): only the plug-in dir has it,
    serving ``served`` under the layer's name."""
    digest = digest_of(blob)
    push_blob(registry, repository, blob)
    descriptor = {"mediaType": media_type, "digest": digest, "size": len(blob), "annotations": annotations}
    ref = push_descriptors(registry, repository, "v1", [descriptor], [diff_id])
    deleted = requests.delete(f"{registry.url}/v2/{repository}/blobs/{digest}", timeout=10)
    assert deleted.status_code == 202, deleted.text
    (plugin_dir / digest.split(":")[1]).write_bytes(served)
    return ref


def test_plugin_source_and_decompressor_end_to_end(daemon: RunningDaemon, registry: RunningRegistry,
                                                   plugin_dir: Path):
    blob, toc_digest = write_blob(FILES)
    ref = push_only_to_plugin(registry, plugin_dir, PLUGIN_REPO + "app", blob, MEDIA_TYPE,
                              {TOC_DIGEST_ANNOTATION: toc_digest}, digest_of(b"not a tar"), blob)
    diff = daemon.layer_dir(ref, digest_of(blob))
    assert (diff / "hello.txt").read_bytes() == FILES["hello.txt"]
    assert (diff / "data/big.bin").read_bytes() == FILES["data/big.bin"]
    assert (plugin_dir / "reads.log").read_text().strip()  # the bytes came through the plug-in
    entry = layer_status(daemon, digest_of(blob))
    assert (entry["source"], entry["decompressor"]) == ("testdir", "rawchunk")
    human = daemon.cli("status").stdout
    assert "testdir" in human and "rawchunk" in human


def test_wrong_bytes_from_a_plugin_source_are_refused(daemon: RunningDaemon, registry: RunningRegistry,
                                                      plugin_dir: Path):
    layer = fragile_layer()
    ref = push_only_to_plugin(registry, plugin_dir, PLUGIN_REPO + "bad", layer.blob, "application/vnd.oci.image"
                              ".layer.v1.tar+gzip", dict(layer.result.annotations()), layer.result.diff_id,
                              corrupted(layer.blob))
    read_is_refused(daemon, daemon.layer_dir(ref, layer.digest))


def test_a_plugin_decompressors_output_is_checked(daemon: RunningDaemon, registry: RunningRegistry,
                                                  plugin_dir: Path):
    """rawchunk hands back whatever bytes the blob holds: lazylayer's own chunk check refuses them."""
    files = {"app/readme.txt": b"x\n", "app/payload.bin": os.urandom(100_000)}
    blob, toc_digest = write_blob(files)
    at = len(files["app/readme.txt"]) + 500  # inside payload.bin
    bad = blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1:]
    ref = push_only_to_plugin(registry, plugin_dir, PLUGIN_REPO + "badraw", blob, MEDIA_TYPE,
                              {TOC_DIGEST_ANNOTATION: toc_digest}, digest_of(b"not a tar"), bad)
    read_is_refused(daemon, daemon.layer_dir(ref, digest_of(blob)))
