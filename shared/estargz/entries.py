"""The writer's input model: layer entries as read from a tar or a directory, and their order.

Both inputs (a tar stream, a directory walk) produce the same `SourceEntry` records into an
`EntryList`, which applies tar-extraction semantics before anything is written:

* a later entry with the same (normalised) path replaces the earlier one and takes the later
  position, as upstream's converter does;
* a root-level ``stargz.index.json`` or landmark in the input is dropped (re-stargzifying an
  eStargz layer is allowed; the writer makes fresh ones);
* a hardlink points at the entry *object* its target named when the link was read, so when that
  target is later replaced the link still means the old file: the first such link becomes a
  regular file with the old payload (what extraction would leave on disk) and the others point
  at it.

`ordered()` then gives the blob order of reference §1.1: prioritised files (each after its
existing parent directories, a hardlink after its target), ``.prefetch.landmark``, the rest; or,
without a list, ``.no.prefetch.landmark`` first.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from lazylayer.shared.errors import FormatError, NotFoundError
from lazylayer.shared.estargz.compress import Payload
from lazylayer.shared.estargz.toc import (
    LANDMARK_CONTENT, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME, EntryType,
    normalize_name,
)

_RESERVED_ROOT_NAMES = {TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK}


@dataclass(eq=False, slots=True)
class SourceEntry:
    """One input entry. ``name`` is normalised ('' is the root). Identity matters (eq=False):
    hardlinks refer to their target object, not to a name that may be reused later."""

    name: str
    type: EntryType
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int | float = 0
    link_name: str = ""  # symlink target, verbatim
    link_target: "SourceEntry | None" = None  # hardlink target (never itself a hardlink)
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    #: PAX records we carry through unchanged (not path/size/ids/times, which are regenerated).
    pax: dict[str, str] = field(default_factory=dict)
    size: int = 0
    payload: Payload | None = None  # regular files with size > 0

    @property
    def is_link(self) -> bool:
        return self.type is EntryType.HARDLINK


def landmark(name: str) -> SourceEntry:
    """A landmark file as upstream writes it: 1 byte 0x0f, mode 0, uid/gid 0, mtime 0."""
    return SourceEntry(
        name=name, type=EntryType.REG, size=len(LANDMARK_CONTENT),
        payload=Payload(None, 0, len(LANDMARK_CONTENT), LANDMARK_CONTENT),
    )


class EntryList:
    """Input entries in input order, with later-wins replacement by path."""

    def __init__(self) -> None:
        self._entries: dict[SourceEntry, None] = {}  # insertion-ordered set
        self._by_name: dict[str, SourceEntry] = {}

    def add(self, entry: SourceEntry) -> None:
        """Append ``entry``, replacing any earlier entry with the same path."""
        if entry.name in _RESERVED_ROOT_NAMES:
            return
        if entry.type is EntryType.HARDLINK:
            target = entry.link_target
            if target is None or target.type is EntryType.DIR:
                raise FormatError(f"input entry {entry.name!r}: hardlink to a directory or to nothing")
        previous = self._by_name.pop(entry.name, None)
        if previous is not None:
            del self._entries[previous]
        self._entries[entry] = None
        self._by_name[entry.name] = entry

    def link_target(self, link: str, name: str) -> SourceEntry:
        """The entry a hardlink named ``name`` pointing at tar path ``link`` refers to right now."""
        target = self._by_name.get(normalize_name(link))
        if target is None:
            raise FormatError(
                f"input entry {name!r}: hardlink to {link!r}, which is not an earlier entry"
            )
        return target.link_target if target.is_link and target.link_target else target

    def ordered(self, prefetch: Sequence[str] = (), *, absent_ok: bool = False) -> list[SourceEntry]:
        """The blob order, landmark included (see the module docstring). ``absent_ok``: paths
        this input lacks are skipped (an image's list spans its layers) instead of refused."""
        entries = self._resolve_replaced_link_targets()
        by_name = {e.name: e for e in entries}
        if absent_ok:
            prefetch = [p for p in prefetch if normalize_name(p) in by_name]
        if not prefetch:
            return [landmark(NO_PREFETCH_LANDMARK), *entries]
        moved: dict[SourceEntry, None] = {}

        def move(entry: SourceEntry) -> None:
            for ancestor in _ancestors(entry.name):
                parent = by_name.get(ancestor)
                if parent is not None and parent not in moved:
                    moved[parent] = None
            if entry.link_target is not None and entry.link_target not in moved:
                move(entry.link_target)
            moved.setdefault(entry, None)

        for raw in prefetch:
            entry = by_name.get(normalize_name(raw))
            if entry is None:
                raise NotFoundError(f"prefetch path {raw!r} is not in the input")
            move(entry)
        rest = [e for e in entries if e not in moved]
        return [*moved, landmark(PREFETCH_LANDMARK), *rest]

    def _resolve_replaced_link_targets(self) -> list[SourceEntry]:
        """Entries in order, with links to replaced entries rewritten (module docstring)."""
        stand_ins: dict[SourceEntry, SourceEntry] = {}
        for entry in self._entries:
            target = entry.link_target
            if target is None or target in self._entries:
                continue
            stand_in = stand_ins.get(target)
            if stand_in is not None:
                entry.link_target = stand_in
                continue
            entry.type, entry.link_target = target.type, None
            entry.size, entry.payload, entry.link_name = target.size, target.payload, target.link_name
            entry.dev_major, entry.dev_minor = target.dev_major, target.dev_minor
            stand_ins[target] = entry
        return list(self._entries)


def _ancestors(name: str) -> Iterable[str]:
    """'' (the root), then each parent directory of ``name``, outermost first."""
    parents: list[str] = []
    while name:
        name = posixpath.dirname(name)
        parents.append(name)
    return reversed(parents)
