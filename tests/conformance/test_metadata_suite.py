"""Port of upstream's metadata reader suite (metadata/testutil: TestReader), through LayerView.

Each case runs with the tar names written plainly, with a leading "./" and with a leading "/"
(upstream also tries "../", which our writer refuses as a name escaping the root). Node counts and
chunk counts are not visible through a filesystem, so they are checked in tests/store.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.conformance.conftest import MakeView
from tests.support.layers import MTIME, Item, blockdev, chardev, directory, fifo, file, hardlink, symlink

PREFIXES = ["", "./", "/"]
SAMPLE = b"qwer" + b"tyui" + b"opas" + b"dfgh" + b"jk"
SAMPLE_TIME = MTIME + 12345


def prefixed(items: list[Item], prefix: str) -> list[Item]:
    return [Item(**{**item.__dict__, "name": prefix + item.name}) for item in items]


def has_file(view, path: str, content: bytes) -> None:
    st = view.lstat(path)
    assert stat.S_ISREG(st.mode)
    assert st.size == len(content)
    assert view.read(path, 0, len(content) + 10) == content


def test_empty(make_view: MakeView):
    view = make_view([])
    assert view.listdir("") == []  # only the hidden landmark is there
    assert stat.S_ISDIR(view.lstat("").mode)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_files(make_view: MakeView, prefix):
    view = make_view(prefixed([
        file("foo", b"foofoo", mode=0o4644),
        directory("bar/"),
        file("bar/baz.txt", b"bazbazbaz", uid=1000, gid=1000),
        file("xxx.txt", b"xxxxx", mtime=SAMPLE_TIME),
        file("y.txt", b"", xattrs={"user.testkey": "testval"}),
    ], prefix))
    has_file(view, "foo", b"foofoo")
    assert stat.S_IMODE(view.lstat("foo").mode) == 0o4644
    has_file(view, "bar/baz.txt", b"bazbazbaz")
    assert (view.lstat("bar/baz.txt").uid, view.lstat("bar/baz.txt").gid) == (1000, 1000)
    has_file(view, "xxx.txt", b"xxxxx")
    assert view.lstat("xxx.txt").mtime == SAMPLE_TIME
    has_file(view, "y.txt", b"")
    assert view.getxattr("y.txt", "user.testkey") == b"testval"
    assert view.listxattr("y.txt") == ["user.testkey"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_dirs(make_view: MakeView, prefix):
    view = make_view(prefixed([
        directory("foo/", mode=0o1600),
        directory("foo/bar/", uid=1000, gid=1000),
        file("foo/bar/baz.txt", b"testtest"),
        file("foo/bar/xxxx", b"x"),
        file("foo/bar/yyy", b"yyy"),
        directory("foo/a/", mtime=SAMPLE_TIME),
        directory("foo/a/1/", xattrs={"user.testkey": "testval"}),
        file("foo/a/1/2", b"1111111111"),
    ], prefix))
    assert view.listdir("foo") == ["a", "bar"]
    assert view.listdir("foo/bar") == ["baz.txt", "xxxx", "yyy"]
    assert view.listdir("foo/a") == ["1"]
    assert view.listdir("foo/a/1") == ["2"]
    assert view.lstat("foo").mode == stat.S_IFDIR | 0o1600
    assert (view.lstat("foo/bar").uid, view.lstat("foo/bar").gid) == (1000, 1000)
    assert view.lstat("foo/a").mtime == SAMPLE_TIME
    assert view.getxattr("foo/a/1", "user.testkey") == b"testval"
    has_file(view, "foo/bar/baz.txt", b"testtest")
    has_file(view, "foo/bar/xxxx", b"x")
    has_file(view, "foo/bar/yyy", b"yyy")
    has_file(view, "foo/a/1/2", b"1111111111")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_hardlinks(make_view: MakeView, prefix):
    view = make_view(prefixed([
        file("foo", b"foofoo", uid=1000, gid=1000),
        directory("bar/"),
        hardlink("bar/foolink", "foo"),
        hardlink("bar/foolink2", "bar/foolink"),  # a chain: resolves to foo
        directory("bar/1/"),
        file("bar/1/baz.txt", b"testtest"),
        hardlink("barlink", "bar/1/baz.txt"),
        symlink("foosym", "bar/foolink2"),
    ], prefix))
    for path in ("foo", "bar/foolink", "bar/foolink2"):
        has_file(view, path, b"foofoo")
        assert (view.lstat(path).uid, view.lstat(path).gid) == (1000, 1000)
    has_file(view, "bar/1/baz.txt", b"testtest")
    has_file(view, "barlink", b"testtest")
    assert view.listdir("bar") == ["1", "foolink", "foolink2"]
    assert view.listdir("bar/1") == ["baz.txt"]
    assert len({view.lstat(p).ino for p in ("foo", "bar/foolink", "bar/foolink2")}) == 1
    assert view.lstat("bar/1/baz.txt").ino == view.lstat("barlink").ino
    assert view.dirent_inodes("bar")["foolink"] == view.lstat("foo").ino
    assert view.readlink("foosym") == "bar/foolink2"
    assert view.lstat("foo").nlink == 3  # three names
    assert view.lstat("barlink").nlink == 2
    assert view.lstat("bar").nlink == 3  # 2 + one subdirectory
    assert view.lstat("").nlink == 3  # root: 2 + bar


@pytest.mark.parametrize("prefix", PREFIXES)
def test_various_files(make_view: MakeView, prefix):
    view = make_view(prefixed([
        directory("bar/"),
        file("bar/../bar///////////////////foo", b""),
        chardev("bar/cdev", 10, 11),
        blockdev("bar/bdev", 100, 101),
        fifo("bar/fifo"),
    ], prefix))
    has_file(view, "bar/foo", b"")
    cdev, bdev = view.lstat("bar/cdev"), view.lstat("bar/bdev")
    assert stat.S_ISCHR(cdev.mode) and (os.major(cdev.rdev), os.minor(cdev.rdev)) == (10, 11)
    assert stat.S_ISBLK(bdev.mode) and (os.major(bdev.rdev), os.minor(bdev.rdev)) == (100, 101)
    assert stat.S_ISFIFO(view.lstat("bar/fifo").mode)
    assert view.listdir("bar") == ["bdev", "cdev", "fifo", "foo"]
    # Lookups normalise the same way.
    assert view.lstat("bar/../bar///foo").ino == view.lstat("bar/foo").ino


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chunks(make_view: MakeView, prefix):
    view = make_view(prefixed([
        directory("foo/"),
        file("foo/small", SAMPLE[:2]),
        file("foo/large", SAMPLE),
    ], prefix), chunk_size=4)
    assert view.read("foo/small", 0, 100) == SAMPLE[:2]
    for offset in range(len(SAMPLE) + 1):
        assert view.read("foo/large", offset, 100) == SAMPLE[offset:]


def test_missing_paths_and_wrong_kinds(make_view: MakeView):
    view = make_view([directory("d/"), file("d/f", b"x"), symlink("s", "d/f")])
    for path in ("nope", "d/nope", "d/f/x", "../d"):
        with pytest.raises(FileNotFoundError):
            view.lstat(path)
    with pytest.raises(NotADirectoryError):
        view.listdir("d/f")
    with pytest.raises(OSError) as info:
        view.readlink("d/f")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        view.getxattr("d/f", "user.none")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(IsADirectoryError):
        view.read("d", 0, 1)
