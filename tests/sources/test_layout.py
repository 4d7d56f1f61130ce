"""An image in an OCI image layout directory, mounted without a registry: `lazylayer mount
oci:PATH:TAG DIR` (a relative PATH is made absolute by the CLI, and the layer store names the
image by the absolute ref)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lazylayer.daemon import mounts
from lazylayer.shared.errors import LazyLayerError
from lazylayer.workers.registry.layout import OCILayout
from lazylayer.workers.registry.manifests import OCI_LAYER_GZIP
from tests.fuse.daemonproc import RunningDaemon
from tests.sources.conftest import (check_sample, config_blob, corrupted, fragile_layer, layer_status, manifest_of,
                                    read_is_refused, sample_layer)
from tests.support.layers import BuiltLayer, build_layer, file


def write_layout(path: Path, tag: str, layers: list[BuiltLayer], blobs: list[bytes] | None = None) -> None:
    """A layout holding an image of ``layers`` under ``tag``; ``blobs`` replaces what is stored
    under each layer's digest (wrong bytes under the right name)."""
    layout = OCILayout(path, create=True)
    for layer, blob in zip(layers, blobs or [l.blob for l in layers]):
        target = layout.blob_path(layer.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    config = config_blob([l.result.diff_id for l in layers])
    layout.put_document(config, "application/vnd.oci.image.config.v1+json", None)
    descriptors = [{"mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": len(l.blob),
                    "annotations": dict(l.result.annotations())} for l in layers]
    layout.put_document(manifest_of(config, descriptors), "application/vnd.oci.image.manifest.v1+json", tag)


def test_oci_layout_image_mounts_without_a_registry(daemon: RunningDaemon, tmp_path: Path):
    layers = [sample_layer(), build_layer([file("top.txt", b"on top\n")])]
    layout = tmp_path / "images" / "app"
    write_layout(layout, "1.0", layers)
    target = tmp_path / "view"
    done = daemon.cli("mount", f"oci:{os.path.relpath(layout)}:1.0", str(target))
    assert done.returncode == 0, done.stderr
    try:
        assert mounts.mount_at(target) is not None
        check_sample(target)
        assert (target / "top.txt").read_bytes() == b"on top\n"
        for layer in layers:
            entry = layer_status(daemon, layer.digest)
            assert entry["ref"] == f"oci:{layout}:1.0"  # absolute: the layer store's name for it
            assert (entry["source"], entry["decompressor"]) == ("oci-layout", "gzip")
            assert entry["source_location"] == str(layout / "blobs" / "sha256" / layer.digest.split(":")[1])
        human = daemon.cli("status").stdout
        assert "oci-layout" in human and "gzip" in human
    finally:
        assert daemon.cli("umount", str(target)).returncode == 0
    report = json.loads(daemon.cli("inspect", f"oci:{layout}:1.0", "--json").stdout)
    assert [(l["source"], l["decompressor"]) for l in report["manifests"][0]["layers"]] == [("oci-layout", "gzip")] * 2


def test_wrong_bytes_in_a_layout_are_refused(daemon: RunningDaemon, tmp_path: Path):
    layer = fragile_layer()
    layout = tmp_path / "bad"
    write_layout(layout, "1.0", [layer], [corrupted(layer.blob)])
    read_is_refused(daemon, daemon.layer_dir(f"oci:{layout}:1.0", layer.digest))


def test_relative_layout_paths_are_refused_by_the_daemon(daemon: RunningDaemon):
    """Workers do not run in the caller's directory: only the CLI may resolve a relative path."""
    with pytest.raises(LazyLayerError, match="absolute layout path"):
        daemon.call("image", {"ref": "oci:relative/app:1.0"})
