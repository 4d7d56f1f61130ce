"""Listings of layer directories, kept by directory: whole ones for the next time, and the ones
being read page by page.

A layer never changes. With daemon/dircache.py the kernel keeps a listing it has read, but it
reads it in pages (one READDIRPLUS of a few KiB each), with no OPENDIR to tell the front that
the same reader goes on: so what has been listed of a directory is kept under the directory's
node, as the replies readdir sends (names and entry attributes), and the next page goes on
from there. A listing read to its end moves to the whole listings, which a listing of the same
directory by another reader (another mount's kernel cache, a front without the kernel's
caching) is answered from: reading the names and every child's attributes from LMDB again was
a third of the front's time in a warm `find` before the kernel kept them. Layer ids are never
reused, so a node always names the same directory. Both are bounded by the entries they hold,
least recently used first out; the directory listed last is always kept, however large, so
that its next page does not start it over.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import pyfuse3

from lazylayer.shared.store.metadata import NodeRef

#: entries kept over all whole listings (~250 bytes each)
MAX_ENTRIES = 200_000
#: entries kept over all listings being read
MAX_PARTIAL_ENTRIES = 50_000

Listing = list[tuple[bytes, pyfuse3.EntryAttributes]]


@dataclass
class Cursor:
    """What has been listed of a directory, and the name to go on after."""

    entries: Listing = field(default_factory=list)
    after: bytes | None = None
    exhausted: bool = False


class Listings:
    """Layer directory listings by node; a whole one is never modified once kept."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_partial_entries: int = MAX_PARTIAL_ENTRIES) -> None:
        self.max_entries = max_entries
        self.max_partial_entries = max_partial_entries
        self._whole: OrderedDict[NodeRef, Listing] = OrderedDict()
        self._partial: OrderedDict[NodeRef, Cursor] = OrderedDict()
        self._entries = 0

    def cursor(self, ref: NodeRef) -> Cursor:
        """Where the listing of ``ref`` stands: whole, under way, or new (then kept as under way)."""
        listing = self._whole.get(ref)
        if listing is not None:
            self._whole.move_to_end(ref)
            return Cursor(listing, exhausted=True)
        cursor = self._partial.get(ref)
        if cursor is None:
            cursor = self._partial[ref] = Cursor()
        self._partial.move_to_end(ref)
        self._trim_partial()
        return cursor

    def listed(self, ref: NodeRef, cursor: Cursor) -> None:
        """``cursor`` has more entries now; when it is exhausted its listing is whole."""
        if cursor.exhausted and len(cursor.entries) <= self.max_entries // 4 and self._partial.get(ref) is cursor:
            del self._partial[ref]
            self._whole[ref] = cursor.entries
            self._entries += len(cursor.entries)
            while self._entries > self.max_entries:
                _, dropped = self._whole.popitem(last=False)
                self._entries -= len(dropped)
        else:
            self._trim_partial()

    def _trim_partial(self) -> None:
        total = sum(len(c.entries) for c in self._partial.values())
        while total > self.max_partial_entries and len(self._partial) > 1:
            _, dropped = self._partial.popitem(last=False)
            total -= len(dropped.entries)
