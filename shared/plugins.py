"""Plug-ins through Python entry points: how a site adds a blob source or a decompressor
without patching lazylayer.

A plug-in package declares, in its own pyproject.toml::

    [project.entry-points."lazylayer.sources"]
    p2p = "mysite.lazyp2p:P2PHandler"

    [project.entry-points."lazylayer.decompressors"]
    lz4 = "mysite.lz4chunked:LZ4Chunked"

Each entry point names a callable (a class, usually) that `make` calls once per process with
the arguments its group defines (workers/sources/handlers.py, shared/estargz/formats.py). The
entry point's name is the plug-in's name in config and in `status`. A plug-in that fails to
import or to build is a ConfigError naming it: a site that asked for it must hear why.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from lazylayer.shared.errors import ConfigError

log = logging.getLogger(__name__)

SOURCES_GROUP = "lazylayer.sources"
DECOMPRESSORS_GROUP = "lazylayer.decompressors"


def installed(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` installed in this environment, by name (sorted)."""
    return {ep.name: ep for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}


def make(entry: EntryPoint, *args: Any) -> Any:
    """Load the entry point and call it with ``args``; any failure is a ConfigError naming it."""
    try:
        factory = entry.load()
        made = factory(*args)
    except Exception as exc:  # a third party's import or constructor: anything can go wrong
        raise ConfigError(f"plug-in {entry.name!r} ({entry.group} = {entry.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc
    log.debug("plug-in %s loaded from %s", entry.name, entry.value)
    return made
