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
from typing import TYPE_CHECKING, Any, Iterable

from lazylayer.shared.config import Config
from lazylayer.shared.errors import ConfigError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger(__name__)

SOURCES_GROUP = "lazylayer.sources"
DECOMPRESSORS_GROUP = "lazylayer.decompressors"
#: the built-in source handlers, in their default order (workers/sources/handlers.py builds them)
BUILTIN_SOURCES = ("oci-layout", "urls", "registry")
#: the built-in decompressors (shared/estargz/formats.py; named here so checking a config
#: imports no decoder)
BUILTIN_DECOMPRESSORS = ("gzip", "zstd")


def installed(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` installed in this environment, by name (sorted)."""
    from importlib.metadata import entry_points  # 25 ms: `lazylayer daemon` checks its config without it

    return {ep.name: ep for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}


def check_names(setting: str, names: Iterable[str], builtin: Iterable[str], group: str) -> dict[str, EntryPoint]:
    """Every name is built in or an installed plug-in of ``group``, else a ConfigError naming
    the setting, the name and what there is. Returns the installed plug-ins, looked up only when
    a name is not built in (the look-up reads every installed distribution's metadata)."""
    known = tuple(builtin)
    names = list(names)
    if all(name in known for name in names):
        return {}
    found = installed(group)
    for name in names:
        if name not in known and name not in found:
            raise ConfigError(f"{setting} names {name!r}, which is neither built in ({', '.join(known)}) nor an "
                              f"installed plug-in ({', '.join(found) or 'none installed'})")
    return found


def check_config(config: Config) -> dict[str, EntryPoint]:
    """The source and decompressor names the config uses all exist (nothing is built): what
    `lazylayer daemon` checks before starting workers that would refuse to run. Returns the
    installed source plug-ins."""
    check_names("decompressors.order", config.decompressors.order, BUILTIN_DECOMPRESSORS, DECOMPRESSORS_GROUP)
    names = [name for names in (config.sources.order, *config.sources.rules.values()) for name in names]
    return check_names("[sources]", names, BUILTIN_SOURCES, SOURCES_GROUP)


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
