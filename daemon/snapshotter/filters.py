"""containerd's List filters over snapshot records: the subset containerd itself sends.

A filter is ``term[,term...]`` (all must hold); List gets several filters, any of which may hold.
A term is ``FIELD``, ``FIELD==VALUE``, ``FIELD!=VALUE`` or ``FIELD~=REGEXP``; FIELD is ``name``,
``parent``, ``kind`` or ``labels.KEY`` with KEY optionally double-quoted, VALUE bare or quoted.
containerd's metadata store sends ``labels."containerd.io/snapshot.ref"==TARGET,parent=="P"``
after a remote Prepare; its garbage collector lists without filters. Anything else is refused
with its text rather than silently matching everything.
"""

from __future__ import annotations

import json
import re

from lazylayer.daemon.snapshotter.metadata import Snapshot
from lazylayer.shared.errors import ProtocolError

_OPERATORS = ("==", "!=", "~=")


def _split_outside_quotes(text: str, separators: tuple[str, ...]) -> list[str]:
    """Split ``text`` at any of ``separators`` that are outside double quotes; the separators
    are kept as their own items."""
    out, current, i, quoted = [], "", 0, False
    while i < len(text):
        char = text[i]
        if char == "\\" and quoted:
            current += text[i:i + 2]
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        if not quoted:
            sep = next((s for s in separators if text.startswith(s, i)), None)
            if sep is not None:
                out += [current, sep]
                current, i = "", i + len(sep)
                continue
        current += char
        i += 1
    if quoted:
        raise ProtocolError(f"snapshot filter {text!r}: unterminated quote")
    return out + [current]


def _unquote(text: str) -> str:
    text = text.strip()
    if text.startswith('"'):
        try:
            return str(json.loads(text))
        except ValueError:
            raise ProtocolError(f"snapshot filter: bad quoted string {text}") from None
    return text


def _field(snapshot: Snapshot, name: str, term: str) -> str | None:
    if name in ("name", "parent"):
        return getattr(snapshot, name)
    if name == "kind":
        return snapshot.kind.name.lower()
    if name.startswith("labels."):
        return snapshot.labels.get(_unquote(name[len("labels."):]))
    raise ProtocolError(f"snapshot filter {term!r}: unknown field {name!r} (name, parent, kind, labels.KEY)")


def _term(snapshot: Snapshot, term: str) -> bool:
    parts = _split_outside_quotes(term, _OPERATORS)
    if len(parts) == 1:
        return _field(snapshot, parts[0].strip(), term) is not None
    if len(parts) != 3:
        raise ProtocolError(f"snapshot filter term {term!r}: one operator expected")
    name, operator, value = parts[0].strip(), parts[1], _unquote(parts[2])
    actual = _field(snapshot, name, term)
    if operator == "==":
        return actual == value
    if operator == "!=":
        return actual != value
    try:
        return actual is not None and re.search(value, actual) is not None
    except re.error as exc:
        raise ProtocolError(f"snapshot filter {term!r}: bad regular expression: {exc}") from None


def matches(snapshot: Snapshot, selector: str) -> bool:
    """Whether ``snapshot`` satisfies every term of ``selector`` (an empty selector: yes)."""
    terms = _split_outside_quotes(selector, (",",))[::2]
    return all(_term(snapshot, t) for t in terms if t.strip())
