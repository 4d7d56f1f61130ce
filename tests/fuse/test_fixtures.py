"""Images made by the upstream Go converter (../shared/fixtures), pushed to a real registry and
read through the mount: every path matches features-expected.json."""

from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest

from tests.conftest import FIXTURE_TAGS, fixture_facts
from tests.fuse.daemonproc import RunningDaemon
from tests.support.registry import Layer, RunningRegistry, push_image

TYPES = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR,
         "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}


@pytest.mark.parametrize("tag", FIXTURE_TAGS)
def test_upstream_fixture_through_the_mount(daemon: RunningDaemon, registry: RunningRegistry, fixtures_dir,
                                            expected_paths, tag):
    facts = fixture_facts(fixtures_dir, tag)
    blob = (fixtures_dir / facts["blob"]).read_bytes()
    push_image(registry, "fuse/features", tag, [Layer(blob, facts["media_type"], dict(facts["annotations"]),
                                                      facts["diff_id"])])
    diff = daemon.layer_dir(f"{registry.host}/fuse/features:{tag}", facts["blob_digest"])
    for path, want in expected_paths.items():
        if want.get("marker"):
            with pytest.raises(FileNotFoundError):
                os.lstat(diff / path)
            continue
        st = os.lstat(diff / path)
        assert st.st_mode == TYPES[want["type"]] | want["mode"], path
        assert (st.st_uid, st.st_gid, st.st_mtime_ns // 10**9) == (want["uid"], want["gid"], want["mtime"]), path
        if "size" in want:
            assert st.st_size == want["size"], path
        if want["type"] == "reg":
            assert st.st_nlink == want["nlink"], path
            assert hashlib.sha256((diff / path).read_bytes()).hexdigest() == want["sha256"], path
        if want["type"] == "symlink":
            assert os.readlink(diff / path) == want["link_target"]
        if want["type"] in ("char", "block"):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (want["devmajor"], want["devminor"]), path
        else:
            assert st.st_rdev == 0, path
        xattrs = {k: os.getxattr(diff / path, k, follow_symlinks=False)
                  for k in os.listxattr(diff / path, follow_symlinks=False) if not k.endswith("overlay.opaque")}
        assert xattrs == {k: base64.b64decode(v) for k, v in want["xattrs"].items()}, path
    gone = os.lstat(diff / "layer-ops/gone")
    assert gone.st_mode == stat.S_IFCHR and gone.st_rdev == 0 and gone.st_nlink == 1
    assert os.getxattr(diff / "layer-ops/reset", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(diff / "layer-ops")) == ["gone", "reset"]
    assert sorted(os.listdir(diff)) == sorted(p for p in expected_paths if "/" not in p)
    # Hardlinks share an inode; random reads across chunk boundaries.
    assert os.lstat(diff / "links/alpha.txt").st_ino == os.lstat(diff / "links/beta.txt").st_ino
    random_file = diff / "data/random-5MiB.bin"
    whole = random_file.read_bytes()
    fd = os.open(random_file, os.O_RDONLY)
    try:
        for offset in (0, 65535, (4 << 20) - 3, (5 << 20) - 1):
            assert os.pread(fd, 70000, offset) == whole[offset:offset + 70000]
    finally:
        os.close(fd)
