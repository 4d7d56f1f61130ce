"""An image cannot steer the kernel's overlayfs through xattrs in its TOC.

overlayfs reads its own state from a lower layer's ``trusted.overlay.*`` xattrs (``user.overlay.*``
when mounted with userxattr): opaque directories, redirects, metacopy origins. A layer that
carries them in its TOC would have the store serve them, and a container's overlay would obey:
here an upper layer's directory declared opaque by xattr alone hides the lower layer's files,
which only a ``.wh..wh..opq`` entry may do (OCI image spec, whiteouts)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.fuse.daemonproc import RunningDaemon
from tests.support.layers import build_layer, directory, file, opaque
from tests.support.registry import Layer, RunningRegistry, push_image

OVERLAY_XATTRS = {
    "trusted.overlay.opaque": "y",
    "user.overlay.opaque": "y",
    "trusted.overlay.redirect": "/hidden",
    "trusted.overlay.overlay.opaque": "y",  # escaped, for an overlay nested in one (kernel 6.7+)
}


def _pushed(registry: RunningRegistry, name: str, layers: list[list]) -> str:
    built = [build_layer(items) for items in layers]
    push_image(registry, f"security/{name}", "v1",
               [Layer(b.blob, annotations=dict(b.result.annotations()), diff_id=b.result.diff_id) for b in built])
    return f"{registry.host}/security/{name}:v1"


@pytest.fixture(scope="module")
def xattr_image(registry: RunningRegistry) -> str:
    lower = [directory("data/"), file("data/lower.txt", b"from the lower layer\n"),
             directory("hidden/"), file("hidden/key", b"lower's\n"),
             directory("wiped/"), file("wiped/old.txt", b"gone\n")]
    upper = [directory("data/", xattrs={**OVERLAY_XATTRS, "user.kept": "yes", "trusted.overlayish": "1"}),
             file("data/upper.txt", b"from the upper layer\n"),
             directory("wiped/"), opaque("wiped")]
    return _pushed(registry, "overlay-xattrs", [lower, upper])


def test_the_store_serves_no_overlayfs_xattr_of_an_image(daemon: RunningDaemon, xattr_image: str):
    upper = daemon.call("image", {"ref": xattr_image})["layers"][1]["digest"]
    data = daemon.layer_dir(xattr_image, upper) / "data"
    assert sorted(os.listxattr(data)) == ["trusted.overlayish", "user.kept"]
    assert os.getxattr(data, "user.kept") == b"yes"
    for name in OVERLAY_XATTRS:
        with pytest.raises(OSError) as raised:
            os.getxattr(data, name)
        assert raised.value.errno == errno.ENODATA, name
    # the opaque flag the store derives from `.wh..wh..opq` is still served
    assert os.getxattr(daemon.layer_dir(xattr_image, upper) / "wiped", "trusted.overlay.opaque") == b"y"
    said = f"layer {upper}: overlayfs's own xattrs (trusted.overlay.*, user.overlay.*) on 1 TOC entries, first 'data'"
    assert said in daemon.log()


def test_a_container_root_merges_what_only_an_xattr_calls_opaque(daemon: RunningDaemon, xattr_image: str,
                                                               workdir: Path):
    target = workdir / "xattr-root"
    done = daemon.cli("mount", "--writable", xattr_image, str(target))
    assert done.returncode == 0, done.stderr
    try:
        assert sorted(os.listdir(target / "data")) == ["lower.txt", "upper.txt"]
        assert (target / "data/lower.txt").read_bytes() == b"from the lower layer\n"
        assert os.listdir(target / "wiped") == []  # a real opaque entry still hides the lower layer
    finally:
        assert daemon.cli("umount", str(target)).returncode == 0
