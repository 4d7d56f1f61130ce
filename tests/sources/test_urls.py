"""A non-distributable layer whose descriptor `urls` point at a plain HTTP server: the registry
has no copy, the layer is served from the URL with ranged GETs and verified like any blob."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.fuse.daemonproc import RunningDaemon
from tests.sources.conftest import (check_sample, corrupted, fragile_layer, layer_status, push_descriptors,
                                    read_is_refused, sample_layer)
from tests.support.blobserver import BlobServer
from tests.support.layers import BuiltLayer
from tests.support.registry import RunningRegistry

NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def push_foreign(registry: RunningRegistry, server: BlobServer, repository: str, layer: BuiltLayer,
                 served: bytes) -> str:
    """An image whose one layer is only at ``server`` (serving ``served`` under its name)."""
    name = layer.digest.split(":")[1]
    server.blobs[name] = served
    descriptor = {"mediaType": NONDISTRIBUTABLE_GZIP, "digest": layer.digest, "size": len(layer.blob),
                  "urls": [server.url(name)], "annotations": dict(layer.result.annotations())}
    ref = push_descriptors(registry, repository, "v1", [descriptor], [layer.result.diff_id])
    head = requests.head(f"{registry.url}/v2/{repository}/blobs/{layer.digest}", timeout=10)
    assert head.status_code == 404  # the registry has no copy
    return ref


def test_foreign_layer_is_served_from_its_urls(daemon: RunningDaemon, registry: RunningRegistry,
                                               blob_server: BlobServer):
    layer = sample_layer()
    ref = push_foreign(registry, blob_server, "foreign/app", layer, layer.blob)
    blob_server.requests.clear()
    check_sample(daemon.layer_dir(ref, layer.digest))
    name = layer.digest.split(":")[1]
    assert [r for r in blob_server.requests if r[0] == name and r[1] not in ("", "bytes=0-0")]  # ranged reads
    entry = layer_status(daemon, layer.digest)
    assert (entry["source"], entry["decompressor"]) == ("urls", "gzip")
    assert entry["source_location"] == blob_server.url(name)
    report = json.loads(daemon.cli("inspect", ref, "--json").stdout)
    [facts] = report["manifests"][0]["layers"]
    assert (facts["source"], facts["decompressor"], facts["toc_digest_matches"]) == ("urls", "gzip", True)


def test_wrong_bytes_from_a_url_are_refused(daemon: RunningDaemon, registry: RunningRegistry,
                                            blob_server: BlobServer, tmp_path: Path):
    layer = fragile_layer()
    ref = push_foreign(registry, blob_server, "foreign/bad", layer, corrupted(layer.blob))
    read_is_refused(daemon, daemon.layer_dir(ref, layer.digest))
