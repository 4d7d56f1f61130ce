"""One registry cannot block another's layer: an "evil" registry serving its own blob under a real
layer's digest (with a manifest whose TOC annotation matches its blob) gets its TOC registered
under that digest; the real image, resolved after it through an honest registry, must still
resolve and read its own bytes, also after a daemon restart (before the fix it was refused with
"TOC digest mismatch" until the cache was wiped)."""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path

from tests.fuse.daemonproc import start_daemon
from tests.support.faultproxy import FaultProxy, Rule
from tests.support.fetchstack import ImageTree, push_image_trees
from tests.support.registry import RunningRegistry

QUIET = {"background": {"enabled": False}}


def _tree(root: Path, files: dict[str, bytes]) -> ImageTree:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return ImageTree(root)


def _manifest(host: str, repository: str, tag: str) -> dict:
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("GET", f"/v2/{repository}/manifests/{tag}",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_an_evil_registry_cannot_shadow_a_real_layer(registry: RunningRegistry, tmp_path: Path):
    good = push_image_trees(registry, "shadow/good", "v1",
                            [_tree(tmp_path / "good", {"etc/motd": b"the real layer\n" * 50})])
    evil = push_image_trees(registry, "shadow/evil", "v1",
                            [_tree(tmp_path / "evil", {"etc/motd": b"an impostor!!!\n" * 50})])
    real, fake = good.layers[0], evil.layers[0]
    # The evil registry: its manifest names the real layer's digest with its own blob's size and
    # TOC, and it serves its own bytes under that digest (HEAD and GET).
    manifest = _manifest(registry.host, "shadow/evil", "v1")
    manifest["layers"][0]["digest"] = real.digest
    body = json.dumps(manifest).encode()
    evil_proxy, good_proxy = FaultProxy(registry.host), FaultProxy(registry.host)
    try:
        evil_proxy.add(Rule("serve", times=None, method=None, path=r"^/v2/shadow/evil/manifests/v1$", body=body,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                     "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}))
        evil_proxy.add(Rule("rewrite", times=None, method=None, path=rf"^/v2/shadow/evil/blobs/{real.digest}$",
                            target=f"/v2/shadow/evil/blobs/{fake.digest}"))
        evil_ref, good_ref = evil.ref_via(evil_proxy.host), good.ref_via(good_proxy.host)
        workdir = tmp_path / "d"
        daemon = start_daemon(workdir, workers=1, config=QUIET)
        try:
            # the impostor's TOC is registered under the real digest, and reads match it
            assert (daemon.layer_dir(evil_ref, real.digest) / "etc/motd").read_bytes() == b"an impostor!!!\n" * 50
            assert (daemon.layer_dir(good_ref, real.digest) / "etc/motd").read_bytes() == b"the real layer\n" * 50
            daemon.stop()
            daemon = start_daemon(workdir, workers=1, config=QUIET)
            assert (daemon.layer_dir(good_ref, real.digest) / "etc/motd").read_bytes() == b"the real layer\n" * 50
            assert daemon.call("status")["cached_layers"][0]["digest"] == real.digest
        finally:
            daemon.stop()
    finally:
        evil_proxy.stop()
        good_proxy.stop()


def test_a_wrong_toc_annotation_over_the_real_blob_leaves_the_layer_alone(registry: RunningRegistry,
                                                                          tmp_path: Path):
    """A manifest naming the real layer (real blob) with a wrong TOC digest annotation must be
    refused without dropping the layer's registration: the genuine blob backs the registered TOC,
    not the annotation (the review found the first fix dropped it, under a mounted layer)."""
    good = push_image_trees(registry, "shadow2/good", "v1",
                            [_tree(tmp_path / "good", {"etc/motd": b"the real layer\n" * 50})])
    real = good.layers[0]
    manifest = _manifest(registry.host, "shadow2/good", "v1")
    manifest["layers"][0]["annotations"]["containerd.io/snapshot/stargz/toc.digest"] = "sha256:" + "1" * 64
    body = json.dumps(manifest).encode()
    liar = FaultProxy(registry.host)
    try:
        liar.add(Rule("serve", times=None, method=None, path=r"^/v2/shadow2/good/manifests/v1$", body=body,
                      headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                               "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}))
        daemon = start_daemon(tmp_path / "d", workers=1, config=QUIET)
        try:
            diff = daemon.layer_dir(good.ref, real.digest)
            assert (diff / "etc/motd").read_bytes() == b"the real layer\n" * 50
            try:
                (daemon.layer_dir(good.ref_via(liar.host), real.digest) / "etc/motd").read_bytes()
                raise AssertionError("the wrong annotation was accepted")
            except OSError:
                pass
            assert (diff / "etc/motd").read_bytes() == b"the real layer\n" * 50
            [cached] = daemon.call("status")["cached_layers"]
            assert cached["digest"] == real.digest and cached["state"] != "failed"
            assert "the genuine blob's TOC is the registered one" in daemon.log()
        finally:
            daemon.stop()
    finally:
        liar.stop()
