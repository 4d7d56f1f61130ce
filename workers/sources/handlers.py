"""Which source serves a layer: ordered handlers, from config and entry points.

``[sources] order`` lists handler names tried in turn; ``[sources] rules`` gives other orders to
refs under a prefix (a registry host, `host/repo/`, `oci:/srv/images`), the longest matching
prefix winning. Built in: ``registry``, ``urls`` (the descriptor's URLs) and ``oci-layout``;
any other name is a plug-in of the ``lazylayer.sources`` entry point group, built once per worker
with the effective `Config` (upstream: the resolveHandlers of fs/layer's NewResolver).

Choosing (`choose`, at registration and on `refresh`) asks each handler in the order; one that
claims the layer must also answer a size probe with the descriptor's size, else the next is
tried, so a dead URL or a peer without the blob falls back to the registry. The choice is kept
on the layer record, and `open` (every other job, in any worker) goes straight to it while the
order still has it and it still claims the layer: no probe per job, and all workers agree.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable
from lazylayer.shared import plugins
from lazylayer.shared.config import Config
from lazylayer.shared.errors import ConfigError, LazyLayerError, ProtocolError, RegistryError
from lazylayer.shared.store.layers import LayerRecord
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.rangesupport import RangeSupport
from lazylayer.workers.registry.reference import parse_image_ref
from lazylayer.workers.sources.base import LayerSource, LayerSpec, SourceHandler
from lazylayer.workers.sources.layout import LayoutHandler
from lazylayer.workers.sources.registry import RegistryHandler
from lazylayer.workers.sources.urls import URLHandler

log = logging.getLogger(__name__)

LAYOUT, URLS, REGISTRY = plugins.BUILTIN_SOURCES


def rule_matches(prefix: str, ref: str) -> bool:
    """A rule's prefix covers a ref at a name boundary: `reg.example` covers `reg.example/app`
    and `reg.example:5000/x`, not `reg.example.evil/x`."""
    if not ref.startswith(prefix):
        return False
    return len(ref) == len(prefix) or prefix[-1] in "/:" or ref[len(prefix)] in "/:@"


class Sources:
    """The source handlers of one worker process."""

    def __init__(self, config: Config, range_support: RangeSupport | None = None) -> None:
        section = config.sources
        self.order = section.order
        self.rules = dict(section.rules)
        self._lock = threading.Lock()
        self._layers: dict[tuple[str, str], LayerSource] = {}
        options = RegistryOptions.from_config(config.registry)
        self.registry = RegistryHandler(options, range_support)
        self.handlers: dict[str, SourceHandler] = {REGISTRY: self.registry, URLS: URLHandler(options),
                                                   LAYOUT: LayoutHandler()}
        installed = plugins.check_config(config)
        for name in dict.fromkeys(name for names in (self.order, *self.rules.values()) for name in names):
            if name in self.handlers:
                continue
            made = plugins.make(installed[name], config)
            if not isinstance(made, SourceHandler):
                raise ConfigError(f"source plug-in {name!r} has no open(spec) method")
            self.handlers[name] = made

    def order_for(self, ref: str) -> tuple[str, ...]:
        """The order for ``ref``, matched in its normalised form (`ubuntu` is
        `docker.io/library/ubuntu:latest`, so a `docker.io` rule covers it)."""
        name = str(parse_image_ref(ref))
        matching = [prefix for prefix in self.rules if rule_matches(prefix, name)]
        return self.rules[max(matching, key=len)] if matching else self.order

    def _claims(self, spec: LayerSpec, prefer: str = "") -> list[LayerSource]:
        """The sources of the handlers that claim the layer, in order (``prefer`` first)."""
        order = self.order_for(spec.ref)
        if prefer in order:
            order = (prefer, *(n for n in order if n != prefer))
        found = []
        for name in order:
            source = self.handlers[name].open(spec)
            if source is not None:
                source.handler = name
                found.append(source)
        return found

    def open(self, spec: LayerSpec, prefer: str = "") -> LayerSource:
        """The source to read the layer from, without probing: the recorded choice ``prefer``
        when it still claims the layer, else the first handler that does."""
        found = self._claims(spec, prefer)
        if not found:
            raise self._nobody(spec)
        return found[0]

    def choose(self, spec: LayerSpec, tail: int = 0) -> LayerSource:
        """The first claiming source whose size probe answers with the descriptor's size
        (``tail``: `LayerSource.size_with_tail`)."""
        errors: list[tuple[str, LazyLayerError]] = []
        for source in self._claims(spec):
            try:
                served = source.size_with_tail(tail)
                if served != spec.size:
                    raise RegistryError(f"layer {spec.digest}: {source.location} serves {served} bytes, "
                                        f"the manifest says {spec.size}")
                return source
            except LazyLayerError as exc:
                log.warning("layer %s: source %s failed: %s", spec.digest, source.handler, exc)
                errors.append((source.handler, exc))
        if not errors:
            raise self._nobody(spec)
        if len(errors) == 1:
            raise errors[0][1]  # its own type: an auth error, a host failure the front backs off
        raise RegistryError(f"layer {spec.digest}: no source could serve it ("
                            + "; ".join(f"{name}: {exc}" for name, exc in errors) + ")")

    def layer_source(self, ref: str, digest: str, record: Callable[[], LayerRecord | None],
                     size: int | None = None, *, spec: LayerSpec | None = None, choose: bool = False,
                     tail: int = 0) -> LayerSource:
        """The layer's source for ``ref``, kept per (ref, layer) in this process; the first time,
        the handler recorded on the layer (or the first that claims it), without a probe. With
        ``choose`` the handlers are asked again in order, probing (registration, refresh). The
        layer is described by ``spec``, else by its ``record()``, else by ``size`` alone."""
        key = (ref, digest)
        with self._lock:
            found = self._layers.get(key)
        if found is not None and not choose:
            return found
        known = record()
        if spec is None and known is not None:
            spec = LayerSpec(ref, digest, known.blob_size, known.media_type, known.urls)
        elif spec is None:
            if size is None:
                raise ProtocolError(f"layer {digest} is not registered: resolve it first")
            spec = LayerSpec(ref, digest, size)
        source = self.choose(spec, tail) if choose else self.open(spec, known.source if known else "")
        with self._lock:
            self._layers[key] = source
        return source

    def _nobody(self, spec: LayerSpec) -> LazyLayerError:
        order = self.order_for(spec.ref)
        return RegistryError(f"layer {spec.digest} of {spec.ref}: none of the sources {', '.join(order)} serves it")
