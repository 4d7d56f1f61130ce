"""The upstream-made fixture blobs, registered in the store and read back through the store
view, against features-expected.json (attributes, contents, overlay presentation)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest

from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.metadata import OpaqueXattr
from tests.conformance.store_view import StoreLayerView
from tests.conftest import FIXTURE_TAGS, fixture_facts
from tests.store.procs import MiB

TYPES = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR,
         "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}


@pytest.mark.parametrize("tag", FIXTURE_TAGS)
def test_fixture_through_the_store(tmp_path, fixtures_dir, expected_paths, tag):
    facts = fixture_facts(fixtures_dir, tag)
    blob = (fixtures_dir / facts["blob"]).read_bytes()
    with open_store(StoreOptions(str(tmp_path / "cache"), map_size=256 * MiB)) as store:
        view = StoreLayerView(store, blob, facts["blob_digest"], OpaqueXattr.TRUSTED)
        assert view.record.toc_digest == facts["toc_digest_annotation"]
        for path, want in expected_paths.items():
            if want.get("marker"):
                with pytest.raises(FileNotFoundError):
                    view.lstat(path)
                continue
            st = view.lstat(path)
            assert st.mode == TYPES[want["type"]] | want["mode"], path
            assert (st.uid, st.gid, st.mtime) == (want["uid"], want["gid"], want["mtime"]), path
            if "size" in want:
                assert st.size == want["size"], path
            if want["type"] == "reg":
                assert st.nlink == want["nlink"], path
                data = view.read(path, 0, want["size"] + 1)
                assert hashlib.sha256(data).hexdigest() == want["sha256"], path
            if want["type"] == "symlink":
                assert view.readlink(path) == want["link_target"]
            if want["type"] in ("char", "block"):
                assert (os.major(st.rdev), os.minor(st.rdev)) == (want["devmajor"], want["devminor"])
            assert {k: view.getxattr(path, k) for k in view.listxattr(path)
                    if not k.endswith("overlay.opaque")} == {
                k: base64.b64decode(v) for k, v in want["xattrs"].items()}, path
        gone = view.lstat("layer-ops/gone")
        assert gone.mode == stat.S_IFCHR and gone.rdev == 0
        assert view.getxattr("layer-ops/reset", "trusted.overlay.opaque") == b"y"
        assert view.listdir("layer-ops") == ["gone", "reset"]
        assert sorted(view.listdir("")) == sorted(p for p in expected_paths if "/" not in p)
        # A file spanning chunk boundaries, read in odd pieces.
        random_file = "data/random-5MiB.bin"
        whole = view.read(random_file, 0, 6 * MiB)
        for offset in (0, 65535, 4 * MiB - 3, 5 * MiB - 1):
            assert view.read(random_file, offset, 70000) == whole[offset : offset + 70000]
