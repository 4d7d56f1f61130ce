"""Merged image views (`lazylayer mount`): a stack of layers with whiteouts and opaque dirs
applied, through the same LayerView interface."""

from __future__ import annotations

import stat

import pytest

from tests.support.layers import build_layer, directory, file, hardlink, opaque, symlink, whiteout

BASE = [
    directory("etc/"), file("etc/passwd", b"root"), file("etc/hosts", b"localhost"),
    directory("var/"), directory("var/lib/"), file("var/lib/db", b"old-db"), file("var/log", b"log"),
    directory("opt/"), file("opt/a", b"a"), file("opt/b", b"b"),
    file("gone-file", b"x"), directory("gone-dir/"), file("gone-dir/inner", b"i"),
    file("replaced", b"was a file"), directory("becomes-file/"), file("becomes-file/x", b"x"),
]


def test_upper_wins_and_dirs_merge(make_image):
    view = make_image([BASE, [directory("etc/"), file("etc/hosts", b"upper hosts"), file("etc/new", b"n")]])
    assert view.listdir("etc") == ["hosts", "new", "passwd"]
    assert view.read("etc/hosts", 0, 100) == b"upper hosts"
    assert view.read("etc/passwd", 0, 100) == b"root"
    assert view.listdir("") == ["becomes-file", "etc", "gone-dir", "gone-file", "opt", "replaced", "var"]


def test_whiteouts_hide_files_and_whole_dirs(make_image):
    view = make_image([BASE, [whiteout("gone-file"), whiteout("gone-dir"), whiteout("var/lib/db")]])
    for path in ("gone-file", "gone-dir", "gone-dir/inner", "var/lib/db", ".wh.gone-file"):
        with pytest.raises(FileNotFoundError):
            view.lstat(path)
    assert "gone-file" not in view.listdir("")
    assert view.listdir("var/lib") == []


def test_opaque_dir_hides_lower_contents_only(make_image):
    view = make_image([BASE, [directory("opt/"), opaque("opt"), file("opt/c", b"c")]])
    assert view.listdir("opt") == ["c"]
    assert view.listxattr("opt") == []  # merged: nothing left to be opaque about
    assert view.listdir("etc") == ["hosts", "passwd"]


def test_kind_changes(make_image):
    view = make_image([BASE, [directory("replaced/"), file("replaced/now", b"dir"), file("becomes-file", b"f")]])
    assert stat.S_ISDIR(view.lstat("replaced").mode) and view.listdir("replaced") == ["now"]
    assert stat.S_ISREG(view.lstat("becomes-file").mode)
    assert view.read("becomes-file", 0, 10) == b"f"
    with pytest.raises(NotADirectoryError):
        view.listdir("becomes-file")


def test_dir_recreated_beside_its_own_whiteout_replaces_lower(make_image):
    """OCI: a whiteout applies to lower layers even if the same layer re-creates the name."""
    view = make_image([BASE, [whiteout("var"), directory("var/"), file("var/fresh", b"f")]])
    assert view.listdir("var") == ["fresh"]


def test_three_layers_and_whiteout_of_an_upper_addition(make_image):
    view = make_image([
        BASE,
        [directory("etc/"), file("etc/mid", b"m"), file("mid-only", b"m")],
        [directory("etc/"), whiteout("etc/passwd"), whiteout("mid-only")],
    ])
    assert view.listdir("etc") == ["hosts", "mid"]
    with pytest.raises(FileNotFoundError):
        view.lstat("mid-only")


def test_nodes_inodes_and_links(make_image):
    view = make_image([BASE, [directory("etc/"), file("etc/f", b"F"), hardlink("etc/g", "etc/f"),
                              symlink("etc/s", "f")]])
    assert view.lstat("etc/f").ino == view.lstat("etc/g").ino
    assert view.lstat("etc/f").nlink == 2
    assert view.readlink("etc/s") == "f"
    assert view.lstat("etc").nlink == 2
    assert view.lstat("var").nlink == 3  # var/lib
    assert view.lstat("").nlink == 2 + 5  # becomes-file, etc, gone-dir, opt, var
    assert view.dirent_inodes("etc")["passwd"] == view.lstat("etc/passwd").ino
    inodes = [view.lstat(p).ino for p in ("", "etc", "var", "var/lib", "opt")]
    assert len(set(inodes)) == len(inodes)


def test_same_stack_gives_the_same_view(implementation):
    layers = [build_layer(BASE), build_layer([file("top", b"t")])]
    first = implementation.open_image(layers)
    second = implementation.open_image(layers)
    assert [first.lstat(p).ino for p in ("", "etc", "top")] == [second.lstat(p).ino for p in ("", "etc", "top")]
