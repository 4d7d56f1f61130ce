"""Configuration: one TOML file, environment overrides, CLI overrides — every knob typed.

Precedence is flag > environment (``LAZYLAYER_<SECTION>_<KEY>``) > file > default. Every value
remembers where it came from so ``lazylayer config show`` can tell an operator why a knob has the
value it has. Unknown keys and wrong types are refused with the key's full name, the offending
value and what was expected — a typo in a config file must not silently run with a default.

The sections are dataclasses below; ``config/lazylayer.toml`` documents each knob with its
default and unit, and a test keeps the two in step.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from lazylayer.shared.errors import ConfigError
from lazylayer.shared.logs import redact

ENV_PREFIX = "LAZYLAYER_"
DEFAULT_CONFIG_PATH = "/etc/lazylayer/lazylayer.toml"


def knob(default: Any, doc: str, unit: str = "", choices: tuple[str, ...] = (), live: bool = False) -> Any:
    """A config field with its one-line documentation (used by `config show`), for enumerated
    strings the values it accepts, and whether a running daemon applies it on SIGHUP (``live``)."""
    metadata = {"doc": doc, "unit": unit, "choices": choices, "live": live}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class DaemonConfig:
    mountpoint: str = knob("/var/lib/lazylayer/store", "where the layer store is mounted")
    run_dir: str = knob("/run/lazylayer", "sockets (workers.sock, control.sock) and the pid file")
    log_level: str = knob("INFO", "DEBUG, INFO, WARNING or ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                          live=True)
    log_format: str = knob("text", "text or json (one object per line)", choices=("text", "json"), live=True)


@dataclass(frozen=True)
class WorkersConfig:
    count: int = knob(2, "fetcher workers the daemon spawns; 0 = external workers only", "processes", live=True)
    heartbeat_interval: float = knob(1.0, "how often workers and front ping each other", "s")
    heartbeat_liveness: int = knob(3, "missed heartbeats before a peer is declared dead", "beats")
    request_timeout: float = knob(60.0, "one fetch request, including re-dispatch", "s")
    max_attempts: int = knob(3, "dispatches of one request before it fails", "attempts")
    restart_backoff_max: float = knob(30.0, "ceiling of the restart backoff of spawned workers", "s")
    restart_stable_after: float = knob(10.0, "uptime after which a restarted worker's backoff resets", "s")
    capacity: int = knob(2, "jobs one worker runs at once (threads; HTTP waits overlap)", "jobs")
    drain_timeout: float = knob(30.0, "on SIGTERM, how long a worker finishes its jobs before handing them back", "s")


@dataclass(frozen=True)
class CacheConfig:
    dir: str = knob("/var/cache/lazylayer", "LMDB environment directory")
    max_size: int = knob(8 << 30, "chunk data budget; eviction keeps the store below it", "bytes", live=True)
    map_size: int = knob(64 << 30, "LMDB map size (address space only; keep >= max_size / 0.85)", "bytes")
    max_readers: int = knob(1024, "LMDB reader slots (the first opener fixes it)", "slots")
    janitor_interval: float = knob(30.0, "how often read accesses (LRU) are applied and the cache trimmed", "s")


@dataclass(frozen=True)
class RegistryConfig:
    plain_http: tuple[str, ...] = knob((), "hosts spoken to over plain HTTP (localhost, 127.0.0.1, ::1 always are)")
    skip_verify: tuple[str, ...] = knob((), "hosts whose TLS certificate is not verified")
    ca_file: str = knob("", "extra CA bundle (PEM) for registry TLS")
    credentials_file: str = knob("", "docker config.json with auths (default ~/.docker/config.json)")
    mirrors: dict[str, tuple[str, ...]] = knob({}, "HOST = [MIRROR, ...]: mirrors tried in order, then HOST itself")
    request_timeout: float = knob(30.0, "one HTTP request (connect + first byte)", "s")
    max_retries: int = knob(5, "retries on connection errors, 429 and 5xx", "retries")
    min_backoff: float = knob(0.03, "first retry backoff (doubles, with jitter)", "s")
    max_backoff: float = knob(30.0, "largest retry backoff", "s")
    coalesce_gap: int = knob(64 << 10, "ranges closer than this are fetched as one", "bytes")


@dataclass(frozen=True)
class FuseConfig:
    attr_timeout: float = knob(1.0, "kernel attribute cache lifetime", "s")
    entry_timeout: float = knob(1.0, "kernel dentry cache lifetime", "s")
    allow_other: bool = knob(True, "let other users (containers) read the mount")
    store_group: str = knob("", "group (name or gid) that may use the layer store besides root; empty: root only")
    opaque_type: str = knob("trusted", "opaque-dir xattr reported: trusted, user or all",
                            choices=("trusted", "user", "all"))
    read_ahead_kb: int = knob(1024, "bdi read-ahead set on the mount (1024 = FUSE max request)", "KiB")
    read_ahead_chunks: int = knob(2, "chunks fetched ahead of a sequential reader", "chunks")
    max_tasks: int = knob(64, "FUSE requests handled at once (reads waiting on fetches need room)", "requests")


@dataclass(frozen=True)
class PrefetchConfig:
    enabled: bool = knob(True, "prefetch the landmark range when a layer is resolved")
    timeout: float = knob(10.0, "how long a mount waits for prefetch to complete", "s")
    size: int = knob(0, "bytes to prefetch for layers without landmarks", "bytes")
    resolve_ttl: float = knob(120.0, "how long an unreferenced resolved layer stays resolved", "s")
    check_interval: float = knob(60.0, "how often a layer in use checks its blob still answers", "s")


@dataclass(frozen=True)
class BackgroundConfig:
    enabled: bool = knob(True, "fetch the rest of each layer at low priority")
    concurrency: int = knob(2, "background fetch requests in flight", "requests")
    quiet_period: float = knob(5.0, "foreground silence before background work resumes", "s")
    bandwidth_limit: int = knob(0, "background fetch bandwidth cap; 0 = none", "bytes/s")
    piece_size: int = knob(8 << 20, "compressed bytes fetched per background request", "bytes")


@dataclass(frozen=True)
class VerificationConfig:
    require_toc_digest: bool = knob(True, "refuse layers whose descriptor lacks the TOC digest annotation")
    allow_unverified: bool = knob(False, "serve legacy stargz layers without chunk digests")


@dataclass(frozen=True)
class FormatConfig:
    max_toc_bytes: int = knob(64 << 20, "largest uncompressed TOC accepted", "bytes")
    max_entries: int = knob(1_000_000, "most TOC entries accepted", "entries")
    chunk_size: int = knob(4 << 20, "convert: uncompressed chunk size", "bytes")


@dataclass(frozen=True)
class MetricsConfig:
    address: str = knob("", "HOST:PORT for Prometheus metrics; empty = off")


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


@dataclass(frozen=True)
class LoadedConfig:
    """The effective config plus, for each ``section.key``, where its value came from."""

    config: Config
    sources: dict[str, str]

    def show(self) -> list[dict[str, Any]]:
        """Rows for `config show`: key, value, source, unit, doc."""
        rows = []
        for section in fields(Config):
            values = getattr(self.config, section.name)
            for f in fields(values):
                key = f"{section.name}.{f.name}"
                value = getattr(values, f.name)
                rows.append({
                    "key": key,
                    "value": redact(_plain(value)),
                    "source": self.sources.get(key, "default"),
                    "unit": f.metadata.get("unit", ""),
                    "doc": f.metadata.get("doc", ""),
                    "live": f.metadata.get("live", False),
                })
        return rows


@dataclass(frozen=True)
class ConfigChanges:
    """What a reload changes: ``live`` knobs a running daemon applies, ``restart`` ones it cannot."""

    live: dict[str, Any]
    restart: dict[str, Any]


def config_changes(old: Config, new: Config) -> ConfigChanges:
    live, restart = {}, {}
    for section in fields(Config):
        before, after = getattr(old, section.name), getattr(new, section.name)
        for f in fields(before):
            if getattr(before, f.name) != getattr(after, f.name):
                target = live if f.metadata.get("live") else restart
                target[f"{section.name}.{f.name}"] = getattr(after, f.name)
    return ConfigChanges(live, restart)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Build the effective config from defaults, ``path`` (if given or the default exists),
    the environment and ``overrides`` (``{"section.key": value}`` from CLI flags)."""
    env = os.environ if env is None else env
    config, sources = Config(), {}
    path = path or None  # LAZYLAYER_CONFIG="" means "no file given", as unset does
    file_path = Path(path) if path is not None else Path(DEFAULT_CONFIG_PATH)
    if path is not None or file_path.exists():
        try:
            document = tomllib.loads(file_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file_path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {file_path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path}: {exc}") from None
        config = _apply(config, _flatten(document, str(file_path)), f"file {file_path}", sources)
    env_values = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        env_values[_env_key(name)] = _EnvText(raw, name)
    config = _apply(config, env_values, "env", sources)
    config = _apply(config, dict(overrides or {}), "flag", sources)
    return LoadedConfig(config, sources)


class _EnvText(str):
    """A raw environment string, parsed by the target field's type."""

    def __new__(cls, value: str, var: str) -> "_EnvText":
        obj = super().__new__(cls, value)
        obj.var = var  # type: ignore[attr-defined]
        return obj


def _env_key(var: str) -> str:
    rest = var[len(ENV_PREFIX):].lower()
    for section in fields(Config):
        if rest.startswith(section.name + "_"):
            return f"{section.name}.{rest[len(section.name) + 1:]}"
    raise ConfigError(f"environment variable {var}: no config section matches (sections: "
                      f"{', '.join(f.name for f in fields(Config))})")


def _flatten(document: dict[str, Any], origin: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: top-level key {section!r} must be a [section] table")
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return flat


def _apply(config: Config, values: dict[str, Any], source: str, sources: dict[str, str]) -> Config:
    for dotted, value in values.items():
        section_name, _, key = dotted.partition(".")
        section_fields = {f.name: f for f in fields(Config)}
        if section_name not in section_fields:
            raise ConfigError(f"{source}: unknown config section {section_name!r} (in {dotted!r})")
        section = getattr(config, section_name)
        hints = get_type_hints(type(section))
        if key not in hints:
            known = ", ".join(f.name for f in fields(section))
            raise ConfigError(f"{source}: unknown config key {dotted!r} (known in [{section_name}]: {known})")
        typed = _coerce(dotted, value, hints[key])
        choices = next(f for f in fields(section) if f.name == key).metadata["choices"]
        if choices and typed not in choices:
            raise ConfigError(f"{source}: config key {dotted!r}: {typed!r} is not one of {', '.join(choices)}")
        config = replace(config, **{section_name: replace(section, **{key: typed})})
        sources[dotted] = getattr(value, "var", source) if isinstance(value, _EnvText) else source
    return config


def _coerce(key: str, value: Any, kind: Any) -> Any:
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, _EnvText):
        return _parse_text(key, str(value), kind)
    if kind == tuple[str, ...]:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"config key {key!r}: {value!r} is not a list of strings")
    if kind == dict[str, tuple[str, ...]]:
        if isinstance(value, dict) and all(
            isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v) for v in value.values()
        ):
            return {str(k): tuple(v) for k, v in value.items()}
        raise ConfigError(f"config key {key!r}: {value!r} is not a table of HOST = [strings]")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key {key!r}: {value!r} is not {expected[kind]}")


def _parse_text(key: str, text: str, kind: Any) -> Any:
    """Environment syntax: lists are ';'-separated; tables are 'HOST=A,B;HOST2=C'."""
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in text.split(";") if part.strip())
    if kind == dict[str, tuple[str, ...]]:
        table: dict[str, tuple[str, ...]] = {}
        for item in filter(None, (part.strip() for part in text.split(";"))):
            host, sep, rest = item.partition("=")
            if not sep or not host.strip():
                raise ConfigError(f"config key {key!r}: {item!r} is not HOST=VALUE[,VALUE]")
            table[host.strip()] = tuple(v.strip() for v in rest.split(",") if v.strip())
        return table
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key {key!r}: {text!r} is not true or false")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"config key {key!r}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
