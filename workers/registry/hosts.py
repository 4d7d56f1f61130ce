"""Which endpoints serve a registry, and how to talk to each (scheme, TLS verification, CA).

Mirrors come first, in the configured order, then the registry itself (containerd's hosts
model). Loopback hosts speak plain HTTP by default, as containerd does; every other host uses
verified TLS unless the settings say otherwise. The knobs mirror the `[registry]` section of
config/lazylayer.toml one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from lazylayer.shared.config import RegistryConfig
from lazylayer.shared.errors import ConfigError
from lazylayer.workers.registry.reference import DOCKER_HUB, DOCKER_HUB_API, host_without_port

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries; defaults are the documented config defaults."""

    #: hosts (``host`` or ``host:port``) spoken to over plain HTTP, besides loopback
    plain_http: tuple[str, ...] = ()
    #: hosts whose TLS certificate is not verified
    skip_verify: tuple[str, ...] = ()
    #: extra CA bundle (PEM) used to verify registry TLS
    ca_file: str = ""
    #: docker config.json with `auths` (empty: $DOCKER_CONFIG/config.json or ~/.docker/config.json)
    credentials_file: str = ""
    #: registry host -> mirror URLs tried in order before the host itself
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: one HTTP request: connect, first byte, longest pause in a body [s]
    request_timeout: float = 30.0
    #: slowest body accepted (total limit request_timeout + size / min_rate); 0 = none [bytes/s]
    min_rate: int = 64 << 10
    #: retries on connection errors, 429 and 5xx
    max_retries: int = 5
    #: first retry backoff, doubled on every retry, with jitter [s]
    min_backoff: float = 0.03
    #: largest backoff, and the cap on an honoured Retry-After [s]
    max_backoff: float = 30.0
    #: largest gap between two wanted ranges that is fetched rather than split [bytes]
    coalesce_gap: int = 0

    @classmethod
    def from_config(cls, section: RegistryConfig) -> "RegistryOptions":
        """The `[registry]` config section, knob for knob (the names are the same)."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Endpoint:
    """One place to send registry API calls to: ``base`` is ``scheme://host[:port][/prefix]``."""

    base: str
    host: str
    verify: bool | str
    is_mirror: bool = False
    #: the registry the mirror stands in for (sent as `?ns=`, as containerd does)
    namespace: str = ""

    @property
    def plain_http(self) -> bool:
        return self.base.startswith("http://")


def endpoints_for(registry: str, options: RegistryOptions) -> list[Endpoint]:
    """Mirrors of ``registry`` in order, then the registry's own API host."""
    found = [_mirror(url, registry, options) for url in options.mirrors.get(registry, ())]
    api_host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
    scheme = "http" if _is_plain_http(api_host, options) else "https"
    found.append(Endpoint(f"{scheme}://{api_host}", api_host, _verify(api_host, options)))
    return found


def _mirror(url: str, registry: str, options: RegistryOptions) -> Endpoint:
    if "://" not in url:
        url = ("http://" if _is_plain_http(url.split("/", 1)[0], options) else "https://") + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"registry.mirrors: {url!r} for {registry} is not an http(s) URL")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return Endpoint(base, parts.netloc, _verify(parts.netloc, options), True, registry)


def _is_plain_http(host: str, options: RegistryOptions) -> bool:
    return host_without_port(host) in LOOPBACK_HOSTS or _listed(host, options.plain_http)


def _verify(host: str, options: RegistryOptions) -> bool | str:
    if _listed(host, options.skip_verify):
        return False
    return options.ca_file or True


def _listed(host: str, hosts: tuple[str, ...]) -> bool:
    """A setting for `host` covers every port; one for `host:port` only that port."""
    return host in hosts or host_without_port(host) in hosts
