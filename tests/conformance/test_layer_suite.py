"""Port of upstream's TestSuiteLayer (fs/layer/testutil.go) through LayerView: testNodeRead and
testExistence (for every OverlayOpaqueType), plus the attribute checks of reference §2.3.

Not ported here: the state dir/file (a FUSE-front feature, checked with the front) and the
innerOffset ("several files in one gzip stream") variants, which our writer does not produce.
testPrefetch needs blob-read counting, so it lives in tests/store/test_prefetch.py.
"""

from __future__ import annotations

import os
import stat

import pytest

from lazylayer.shared.store.metadata import OpaqueXattr
from tests.conformance.conftest import MakeView
from tests.support.layers import directory, file, opaque, symlink, whiteout

OPAQUE_KEYS = {
    OpaqueXattr.ALL: ["trusted.overlay.opaque", "user.overlay.opaque"],
    OpaqueXattr.TRUSTED: ["trusted.overlay.opaque"],
    OpaqueXattr.USER: ["user.overlay.opaque"],
}
CHUNK = 3
DATA = b"0123456789"


@pytest.mark.parametrize("file_size", [3, 6, 10])
def test_node_read(make_view: MakeView, file_size):
    """Every read size (in one chunk, across chunks, past EOF) at every start (chunk top or
    middle, first/second/last chunk), with 3-byte chunks: bytes right and clipped at EOF."""
    content = DATA[:file_size]
    view = make_view([file("foo.txt", content)], chunk_size=CHUNK)
    assert view.lstat("foo.txt").size == file_size
    for offset in range(file_size + 2):
        for size in range(0, file_size + 3):
            assert view.read("foo.txt", offset, size) == content[offset : offset + size], (offset, size)


@pytest.mark.parametrize("kind", list(OpaqueXattr))
class TestExistence:
    def test_whiteout_with_sibling(self, make_view: MakeView, kind):
        view = make_view([directory("foo/"), file("foo/bar.txt"), whiteout("foo/foo.txt")], opaque=kind)
        st = view.lstat("foo/foo.txt")
        assert st.mode == stat.S_IFCHR  # exactly: perm 0, what overlayfs takes as a whiteout
        assert st.rdev == os.makedev(0, 0)
        assert (st.uid, st.gid, st.size, st.nlink) == (0, 0, 0, 1)
        assert view.dirent_inodes("foo")["foo.txt"] == st.ino
        assert view.listdir("foo") == ["bar.txt", "foo.txt"]
        with pytest.raises(FileNotFoundError):
            view.lstat("foo/.wh.foo.txt")

    def test_whiteout_with_duplicated_name(self, make_view: MakeView, kind):
        view = make_view([directory("foo/"), file("foo/bar.txt", b"test"), whiteout("foo/bar.txt")], opaque=kind)
        assert stat.S_ISREG(view.lstat("foo/bar.txt").mode)
        assert view.read("foo/bar.txt", 0, 10) == b"test"
        assert view.listdir("foo") == ["bar.txt"]
        with pytest.raises(FileNotFoundError):
            view.lstat("foo/.wh.bar.txt")

    def check_opaque(self, view, kind, extra: dict[str, bytes] = {}) -> None:
        assert view.listxattr("foo") == OPAQUE_KEYS[kind] + list(extra)
        for key in OPAQUE_KEYS[kind]:
            assert view.getxattr("foo", key) == b"y"
        for key in set(OPAQUE_KEYS[OpaqueXattr.ALL]) - set(OPAQUE_KEYS[kind]):
            with pytest.raises(OSError):
                view.getxattr("foo", key)
        for key, value in extra.items():
            assert view.getxattr("foo", key) == value
        with pytest.raises(FileNotFoundError):
            view.lstat("foo/.wh..wh..opq")
        assert ".wh..wh..opq" not in view.listdir("foo")

    def test_opaque(self, make_view: MakeView, kind):
        view = make_view([directory("foo/"), opaque("foo")], opaque=kind)
        self.check_opaque(view, kind)
        assert view.listdir("foo") == []

    def test_opaque_with_sibling(self, make_view: MakeView, kind):
        view = make_view([directory("foo/"), opaque("foo"), file("foo/bar.txt", b"test")], opaque=kind)
        self.check_opaque(view, kind)
        assert view.read("foo/bar.txt", 0, 10) == b"test"

    def test_opaque_with_xattr(self, make_view: MakeView, kind):
        view = make_view([directory("foo/", xattrs={"user.foo": "bar"}), opaque("foo")], opaque=kind)
        self.check_opaque(view, kind, {"user.foo": b"bar"})

    def test_no_opaque_xattr_on_plain_dirs(self, make_view: MakeView, kind):
        view = make_view([directory("foo/")], opaque=kind)
        assert view.listxattr("foo") == []

    @pytest.mark.parametrize("landmark", [".prefetch.landmark", ".no.prefetch.landmark"])
    def test_landmarks_hidden_at_root_only(self, make_view: MakeView, kind, landmark):
        view = make_view([file(landmark, b"test"), directory("foo/"), file(f"foo/{landmark}", b"test")], opaque=kind)
        with pytest.raises(FileNotFoundError):
            view.lstat(landmark)
        assert landmark not in view.listdir("")
        assert view.read(f"foo/{landmark}", 0, 10) == b"test"
        assert view.listdir("foo") == [landmark]

    def test_file_suid(self, make_view: MakeView, kind):
        view = make_view([file("test", b"test", mode=0o4644)], opaque=kind)
        assert view.lstat("test").mode == stat.S_IFREG | 0o4644

    def test_dir_sgid(self, make_view: MakeView, kind):
        view = make_view([directory("test/", mode=0o2755)], opaque=kind)
        assert view.lstat("test").mode == stat.S_IFDIR | 0o2755

    def test_file_sticky(self, make_view: MakeView, kind):
        view = make_view([file("test", b"test", mode=0o1644)], opaque=kind)
        assert view.lstat("test").mode == stat.S_IFREG | 0o1644


def test_symlink_size_is_target_length(make_view: MakeView):
    view = make_view([symlink("s", "some/target"), symlink("u", "ünï")])
    assert view.lstat("s").size == len("some/target")
    assert view.lstat("u").size == len("ünï".encode())
    assert stat.S_ISLNK(view.lstat("s").mode)
    assert view.readlink("u") == "ünï"


def test_blocks_are_512_byte_units_of_4k_blocks(make_view: MakeView):
    view = make_view([file("a", b"x"), file("b", bytes(4097)), file("c")])
    assert [view.lstat(p).blocks for p in "abc"] == [8, 16, 0]


def test_implicit_parents_are_0755_dirs(make_view: MakeView):
    view = make_view([file("a/b/c", b"x")])
    for path in ("a", "a/b"):
        st = view.lstat(path)
        assert st.mode == stat.S_IFDIR | 0o755
    assert view.lstat("a").nlink == 3
    assert view.lstat("a/b").nlink == 2


def test_inodes_are_distinct_and_stable(make_view: MakeView):
    items = [directory("d/"), file("d/a", b"1"), file("d/b", b"2"), symlink("l", "d/a")]
    first, second = make_view(items), make_view(items)
    paths = ["", "d", "d/a", "d/b", "l"]
    inodes = [first.lstat(p).ino for p in paths]
    assert len(set(inodes)) == len(paths)
    assert 1 not in inodes  # FUSE's root inode is the daemon's, not a layer's
    # The same layer registered again (any process, any restart) keeps its inodes.
    assert [second.lstat(p).ino for p in paths] == inodes
