"""The layers the store layout holds, and the references its clients take on them.

MNT/<ref>/<digest> is resolved (and verified) on first use and kept for the layout: `diff`,
`info`, `blob` and the listings of the layout's directories. The layout takes no reference of
its own, as upstream stargz-store: creating ``use`` takes one and ``rmdir`` of the layer dir
gives it back, so a client that released everything (podman after rmi) leaves the layer to the
resolver's TTL. The references are journaled (daemon/journal.py) and taken again by the front
that takes the connection over (`hold_again`).

What the layout's directories list (refs, their digests, a held layer's three entries) changes
here, and the kernel may be keeping those listings (daemon/dircache.py): each change moves the
layout's mtime and drops the attributes the kernel has of the directories concerned.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyfuse3

from lazylayer.daemon.journal import Journal, uses_in
from lazylayer.daemon.layer import Layer, Resolver
from lazylayer.daemon.layout import Kind, LayoutNode
from lazylayer.shared.errors import LazyLayerError

log = logging.getLogger(__name__)


class HeldLayers:
    def __init__(self, resolver: Resolver, journal: Journal) -> None:
        self.resolver = resolver
        self.journal = journal
        self._held: dict[tuple[str, str], Layer] = {}
        self._refs: dict[str, set[str]] = {}
        #: the layout directories' mtime: moves when what they list does
        self.mtime_ns = time.time_ns()
        self._serving = False

    def serving(self) -> None:
        """The FUSE session is up: changes are told to the kernel from now on."""
        self._serving = True

    def get(self, ref: str, digest: str) -> Layer | None:
        return self._held.get((ref, digest))

    def layers(self) -> list[Layer]:
        return list(self._held.values())

    def refs(self) -> list[str]:
        return sorted(self._refs)

    def digests(self, ref: str) -> list[str]:
        return sorted(self._refs.get(ref, ()))

    def clear(self) -> None:
        self._held.clear()

    async def hold(self, ref: str, digest: str) -> Layer:
        """The layer behind MNT/<ref>/<digest>; an evicted one is resolved again. Typed errors."""
        key = (ref, digest)
        layer = self._held.get(key)
        if layer is not None and not layer.closed:
            layer.touch()
            return layer
        desc = await self.resolver.descriptor(ref, digest)
        layer = await self.resolver.resolve(ref, desc)
        layer.done()  # resolve took a reference on our behalf; the layout keeps none
        current = self._held.get(key)
        if current is not None and not current.closed:  # a concurrent lookup got there first
            return current
        self._held[key] = layer
        digests = self._refs.setdefault(ref, set())
        if digest not in digests:
            self._changed([LayoutNode(Kind.REF, ref=ref), LayoutNode(Kind.LAYER, ref, digest)]
                          + ([] if digests else [LayoutNode(Kind.ROOT)]))
            digests.add(digest)
        return layer

    def use(self, ref: str, digest: str, layer: Layer) -> None:
        """A client created MNT/<ref>/<digest>/use (``layer``, held): one more reference, journaled."""
        layer.acquire()
        self.journal.use(ref, digest, 1)
        log.info("layer %s of %s in use (%d references)", digest, ref, layer.refs)

    def release(self, ref: str, digest: str) -> bool:
        """A client removed MNT/<ref>/<digest>: one reference less; False for a layer not held."""
        layer = self._held.get((ref, digest))
        if layer is None:
            return False
        layer.done()
        if self.journal.uses[(ref, digest)] > 0:
            self.journal.use(ref, digest, -1)
        log.info("layer %s of %s released (%d references)", digest, ref, layer.refs)
        return True

    async def hold_again(self, journal: list[dict[str, Any]]) -> None:
        """After a takeover: hold the layers the restored layout names, so their directories
        list as before, with the `use` references the journal counts (one failing layer is
        logged and skipped)."""
        uses = uses_in(journal)
        for node in self.journal.layout.nodes(Kind.LAYER):
            try:
                layer = await self.hold(node.ref, node.digest)
            except LazyLayerError as exc:
                log.warning("layer %s of %s not held again after the takeover: %s", node.digest, node.ref, exc)
                continue
            for _ in range(uses[(node.ref, node.digest)]):
                layer.acquire()
                self.journal.uses[(node.ref, node.digest)] += 1

    def _changed(self, nodes: list[LayoutNode]) -> None:
        """``nodes`` list something new. Told before the request that held the layer is
        answered, so that its caller's next look at them is fresh. Dropping attributes takes
        no lock a request of ours could hold (fs/fuse/inode.c, fuse_reverse_inval_inode with
        no range), so it cannot wait on this loop."""
        self.mtime_ns = max(time.time_ns(), self.mtime_ns + 1)
        if not self._serving:
            return
        for inode in map(self.journal.layout.known, nodes):
            if inode is None:
                continue
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError:  # the kernel does not know it (yet): nothing to forget
                pass
