"""What a TOC may say reaches a stat reply without overflowing it: the widest accepted ids and
devices and the farthest RFC 3339 times fit pyfuse3's EntryAttributes (the front's getattr,
lookup and readdir build one per node; an OverflowError there used to take the front down)."""

from __future__ import annotations

import hashlib

import pyfuse3
import pytest

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import TOCError
from lazylayer.shared.estargz.fields import DEV_MAJOR_MAX, DEV_MINOR_MAX, MTIME_MAX, UINT32_MAX
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import EntryType, TOCEntry
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.layers import Layers
from lazylayer.shared.store.layerbuild import encoded_attr_of
from lazylayer.shared.store.metadata import Metadata, attr_of
from tests.format.blobkit import BlobBuilder


def test_extreme_attributes_fit_a_stat_reply(tmp_path):
    builder = BlobBuilder()
    builder.add_file("late", b"x")[0].update(uid=UINT32_MAX, gid=UINT32_MAX, modtime="9999-12-31T23:59:59Z")
    builder.add_file("early", b"y")[0].update(modtime="0002-01-01T00:00:00Z")
    builder.add(name="dev", type="char", devMajor=DEV_MAJOR_MAX, devMinor=DEV_MINOR_MAX)
    blob = builder.build()
    toc = BlobReader.open(BytesSource(blob)).toc
    with open_store(StoreOptions(str(tmp_path / "cache"), map_size=64 << 20)) as store:
        record = Layers(store).register("sha256:" + hashlib.sha256(blob).hexdigest(), len(blob), toc, verified=True)
        meta = Metadata(store)
        times = {}
        for name in ("late", "early", "dev"):
            attr = meta.getattr(meta.resolve(record.root, name))
            reply = pyfuse3.EntryAttributes()
            reply.st_mode, reply.st_uid, reply.st_gid, reply.st_rdev = attr.mode, attr.uid, attr.gid, attr.rdev
            reply.st_size, reply.st_mtime_ns = attr.size, attr.mtime * 1_000_000_000  # as daemon/fs.py does
            times[name] = attr.mtime
    assert times["late"] == MTIME_MAX and times["early"] == -MTIME_MAX


def test_registration_encodes_the_attributes_attr_of_gives():
    """Registration encodes each entry's row without a NodeAttr in between (encoded_attr_of):
    byte for byte what attr_of(...).encode() gives, for every kind of node."""
    entries = [
        TOCEntry(name="d", type=EntryType.DIR, mode=0o755, uid=7, gid=8, mtime=99),
        TOCEntry(name="f", type=EntryType.REG, mode=0o4755, size=1 << 40, mtime=-5, xattrs={"user.k": b"\x00v"}),
        TOCEntry(name="l", type=EntryType.SYMLINK, mode=0o777, link_name="t\u00e9/../x"),
        TOCEntry(name="c", type=EntryType.CHAR, dev_major=DEV_MAJOR_MAX, dev_minor=DEV_MINOR_MAX),
        TOCEntry(name="b", type=EntryType.BLOCK, dev_major=8, dev_minor=1),
        TOCEntry(name="p", type=EntryType.FIFO, mode=0o600, mtime=MTIME_MAX + 10),
    ]
    for entry in entries:
        assert encoded_attr_of(entry) == attr_of(entry).encode(), entry.name


def test_a_symlink_target_with_a_lone_surrogate_is_a_toc_error(tmp_path):
    builder = BlobBuilder()
    builder.add(name="l", type="symlink", linkName="\udcff")
    blob = builder.build()
    with open_store(StoreOptions(str(tmp_path / "cache"), map_size=64 << 20)) as store:
        with pytest.raises(TOCError, match="linkName holds a lone UTF-16 surrogate"):
            toc = BlobReader.open(BytesSource(blob)).toc
            Layers(store).register("sha256:" + hashlib.sha256(blob).hexdigest(), len(blob), toc, verified=True)
