"""The layer store's own tree: what lives above the layers' contents, and who may reach it.

```
MNT/<base64(ref)>/<layer digest>/diff/...      the layer's tree (containers' additional layer store)
MNT/<base64(ref)>/<layer digest>/info          layer info JSON (containers/storage field names)
MNT/<base64(ref)>/<layer digest>/blob          the compressed blob (fetched whole and verified on first read)
MNT/<base64(ref)>/<layer digest>/diff/.lazylayer/<digest>.json
                                               state file: Info + last error (hidden, lookup only)
MNT/.images/<view id>/...                      merged image view of `lazylayer mount` (hidden)
```

Who may reach it: container hosts are multi-user machines and images come from strangers. Naming
``MNT/<base64(ref)>`` makes the daemon resolve and fetch that image, so the layout is root's
(directories 0500, files 0400, as upstream stargz-store), or also a configured group's (0550 /
0440): the kernel refuses everyone else before a lookup reaches us (`default_permissions`), and
`StoreAccess.may_fetch` refuses them again in the handlers that would reach a registry. Layer
contents keep the image's own modes: containers reach them through their own overlay mounts, made
by root, and the store is mounted ``nosuid,nodev`` so an image's setuid binaries and device nodes
give nothing to whoever reaches them through the store itself.
"""

from __future__ import annotations

import base64
import binascii
import grp
import re
import stat
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from lazylayer.daemon.layer import Layer
from lazylayer.shared.errors import ConfigError
from lazylayer.shared.estargz.annotations import UNCOMPRESSED_SIZE_ANNOTATION

IMAGES_DIR = b".images"
STATE_DIR = b".lazylayer"
DIFF, INFO, USE, BLOB = b"diff", b"info", b"use", b"blob"
DIGEST_NAME = re.compile(r"^sha256:[0-9a-f]{64}$")
#: containers/storage's Compression enum (pkg/archive): what `info` reports
_COMPRESSION = {"gzip": 2, "zstd": 4}


class Kind(Enum):
    ROOT = "root"
    IMAGES = "images"
    REF = "ref"
    LAYER = "layer"
    INFO = "info"
    BLOB = "blob"
    STATE_DIR = "state-dir"
    STATE_FILE = "state-file"


DIR_KINDS = frozenset({Kind.ROOT, Kind.IMAGES, Kind.REF, Kind.LAYER, Kind.STATE_DIR})


@dataclass(frozen=True)
class LayoutNode:
    """A node of the store layout (not of a layer): what it is and whose."""

    kind: Kind
    ref: str = ""
    digest: str = ""
    layer_id: int = 0


@dataclass(frozen=True)
class StoreAccess:
    """Who owns the layout: root, plus the members of ``gid`` when one is configured."""

    gid: int | None = None

    @classmethod
    def from_group(cls, group: str) -> "StoreAccess":
        """``fuse.store_group``: a group name or number; empty = root only."""
        if not group:
            return cls()
        if group.isascii() and group.isdigit():
            return cls(int(group))
        try:
            return cls(grp.getgrnam(group).gr_gid)
        except KeyError:
            raise ConfigError(f"fuse.store_group: no group named {group!r} on this host") from None

    def mode(self, kind: Kind) -> int:
        """Directories 0500 and files 0400 (0550 / 0440 with a group): nobody else gets in."""
        group = 0o050 if self.gid is not None else 0
        if kind in DIR_KINDS:
            return stat.S_IFDIR | 0o500 | group
        return stat.S_IFREG | 0o400 | (group & 0o040)

    def may_fetch(self, uid: int, gid: int, pid: int) -> bool:
        """Whether the caller of a FUSE request may make us resolve or fetch (root, or a
        member of the store group, supplementary groups included)."""
        if uid == 0:
            return True
        if self.gid is None:
            return False
        return gid == self.gid or self.gid in _supplementary_groups(pid)


def _supplementary_groups(pid: int) -> set[int]:
    """A process's supplementary groups (FUSE requests carry only uid, gid and pid)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return set()


class LayoutInodes:
    """Inode numbers of the layout's nodes: 1 is MNT, the rest in order of first lookup, below
    ``limit``. They are not derived from LMDB (a ref is any string), so each new one is reported
    to ``on_new`` (the holder's journal) and a front that takes the connection over `restore`s
    them: the kernel keeps naming the inodes it was given."""

    def __init__(self, root_inode: int, limit: int) -> None:
        self._nodes: dict[int, LayoutNode] = {root_inode: LayoutNode(Kind.ROOT)}
        self._inodes: dict[LayoutNode, int] = {LayoutNode(Kind.ROOT): root_inode}
        self._limit = limit
        self.on_new: Callable[[dict[str, Any]], None] | None = None

    def node(self, inode: int) -> LayoutNode | None:
        return self._nodes.get(inode)

    def nodes(self, kind: Kind) -> list[LayoutNode]:
        return [node for node in self._nodes.values() if node.kind is kind]

    def known(self, node: LayoutNode) -> int | None:
        """``node``'s inode if it has one (the kernel may have been told of it)."""
        return self._inodes.get(node)

    def inode(self, node: LayoutNode) -> int | None:
        """``node``'s inode, allocated on first use; None when the space is full."""
        inode = self._inodes.get(node)
        if inode is None:
            inode = len(self._nodes) + 1
            if inode >= self._limit:
                return None
            self._add(inode, node)
            if self.on_new is not None:
                self.on_new(_record(inode, node))
        return inode

    def records(self) -> list[dict[str, Any]]:
        """The whole table as journal records (for a holder that starts after the front)."""
        return [_record(inode, node) for inode, node in self._nodes.items() if node.kind is not Kind.ROOT]

    def _add(self, inode: int, node: LayoutNode) -> None:
        self._nodes[inode] = node
        self._inodes[node] = inode

    def restore(self, journal: list[dict[str, Any]]) -> None:
        for record in journal:
            if "node" in record:
                inode, kind, ref, digest, layer_id = record["node"]
                self._add(inode, LayoutNode(Kind(kind), ref, digest, layer_id))


def _record(inode: int, node: LayoutNode) -> dict[str, Any]:
    return {"node": [inode, node.kind.value, node.ref, node.digest, node.layer_id]}


def decode_ref(name: bytes) -> str | None:
    """A ref directory name: base64 of the reference (standard or URL-safe alphabet)."""
    try:
        raw = base64.b64decode(name.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
        ref = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not ref or any(c.isspace() or ord(c) < 32 for c in ref):
        return None
    return ref


def encode_ref(ref: str) -> str:
    return base64.b64encode(ref.encode()).decode()


def name_of(node: LayoutNode) -> str:
    return encode_ref(node.ref) if node.kind is Kind.REF else node.digest


def layer_info(layer: Layer) -> dict[str, Any]:
    """`info` as containers/storage's additional layer store reads it (same field names as
    upstream stargz-store); ``diff-digest`` is the DiffID from the image config. The size
    annotation comes from a stranger's manifest: only plain ASCII digits count."""
    desc = layer.desc
    info: dict[str, Any] = {"compressed-diff-digest": desc.digest, "compressed-size": desc.size}
    if desc.diff_id:
        info["diff-digest"] = desc.diff_id
    size = desc.annotations.get(UNCOMPRESSED_SIZE_ANNOTATION)
    if size and size.isascii() and size.isdigit():
        info["diff-size"] = int(size)
    kind = "zstd" if "zstd" in desc.media_type else "gzip"
    info["compression"] = _COMPRESSION[kind]
    return info
