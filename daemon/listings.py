"""Whole listings of layer directories, kept for the next time one is opened.

A layer never changes, but pyfuse3 cannot ask the kernel to cache a directory's entries
(FOPEN_CACHE_DIR), so every `opendir` + `readdir` of a layer directory comes to the front, which
read the names and every child's attributes from LMDB again: on a warm `find` over the bench
image's largest layer that was a third of the front's time. A listing read to its end is kept
here, as the replies readdir sends (names and entry attributes), under the directory's node
(layer ids are never reused, so a node always names the same directory). Bounded by the
entries held, least recently opened first out."""

from __future__ import annotations

from collections import OrderedDict

import pyfuse3

from lazylayer.shared.store.metadata import NodeRef

#: entries kept over all listings (~250 bytes each)
MAX_ENTRIES = 200_000

Listing = list[tuple[bytes, pyfuse3.EntryAttributes]]


class Listings:
    """Complete directory listings by node; never modified once put."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._listings: OrderedDict[NodeRef, Listing] = OrderedDict()
        self._entries = 0

    def get(self, ref: NodeRef) -> Listing | None:
        listing = self._listings.get(ref)
        if listing is not None:
            self._listings.move_to_end(ref)
        return listing

    def put(self, ref: NodeRef, listing: Listing) -> None:
        """Keep ``listing`` (the caller no longer changes it); one over a quarter of the bound is not kept."""
        if ref in self._listings or len(listing) > self.max_entries // 4:
            return
        self._listings[ref] = listing
        self._entries += len(listing)
        while self._entries > self.max_entries:
            _, dropped = self._listings.popitem(last=False)
            self._entries -= len(dropped)
