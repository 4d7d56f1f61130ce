"""Configuration: one TOML file, environment overrides, CLI overrides — every knob typed.

Precedence is flag > environment (``LAZYLAYER_<SECTION>_<KEY>``) > file > default. Every value
remembers where it came from so ``lazylayer config show`` can tell an operator why a knob has the
value it has. Unknown keys and wrong types are refused with the key's full name, the offending
value and what was expected — a typo in a config file must not silently run with a default.

The sections are frozen msgspec Structs below (records like dataclasses; the 16 sections are made
at import in every process, the front before its mount and each worker before it serves: as
dataclasses their generated methods cost ~22 ms of compiling per process, as Structs ~1 ms).
``config/lazylayer.toml`` documents each knob with its default and unit, and a test keeps the two
in step.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping, TypeVar, get_type_hints

import msgspec
from msgspec.structs import replace

from lazylayer.shared.errors import ConfigError
from lazylayer.shared.logs import redact

ENV_PREFIX = "LAZYLAYER_"
DEFAULT_CONFIG_PATH = "/etc/lazylayer/lazylayer.toml"


#: units whose values are byte counts: they also accept K/M/G/T suffixes ("8G", "64KiB")
SIZE_UNITS = ("bytes", "bytes/s")
_SIZE = re.compile(r"(-?\d+)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_FACTORS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count written as ``65536``, ``64K``, ``4M``, ``8G``, ``1T`` (binary multiples; a
    trailing ``B`` or ``iB`` is allowed): the one syntax of config files, environment and flags.
    A sign is parsed too, so that "-5" is refused by the knob's range, saying so."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 65536, 64K, 4M, 8G)")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2) and match.group(2).lower()]


class Knob(msgspec.Struct, frozen=True):
    """What `knob` says of one config key besides its default."""

    doc: str
    unit: str
    choices: tuple[str, ...]
    live: bool
    minimum: float | None
    positive: bool


#: knobs declared by the class body being executed, in order; `_section` pairs them with its fields
_pending: list[Knob] = []
#: (section class, key) -> its knob
_KNOBS: dict[tuple[type, str], Knob] = {}

_S = TypeVar("_S", bound=type)


def knob(default: Any, doc: str, unit: str = "", choices: tuple[str, ...] = (), live: bool = False,
         minimum: float | None = None, positive: bool = False) -> Any:
    """A config field with its one-line documentation (used by `config show`), for enumerated
    strings the values it accepts, whether a running daemon applies it on SIGHUP (``live``), and
    for numbers the values that make sense (``minimum``, or ``positive``: above zero) - a
    negative worker count or a zero timeout is refused at load, not met as a hang later."""
    _pending.append(Knob(doc, unit, choices, live, 0 if positive else minimum, positive))
    if isinstance(default, dict):
        return msgspec.field(default_factory=lambda: dict(default))
    return default


def _section(cls: _S) -> _S:
    """A config section: its fields, in order, are the knobs its body declared."""
    names = cls.__struct_fields__  # type: ignore[attr-defined]
    if len(names) != len(_pending):
        raise TypeError(f"{cls.__name__}: every field must be a knob() ({len(names)} fields, {len(_pending)} knobs)")
    for name, declared in zip(names, _pending):
        _KNOBS[cls, name] = declared
    _pending.clear()
    return cls


def knob_of(section: type, key: str) -> Knob:
    """The knob of ``section``'s field ``key``."""
    return _KNOBS[section, key]


def _keys(section: Any) -> tuple[str, ...]:
    """A section's (or `Config`'s) field names, in order."""
    return section.__struct_fields__


@_section
class DaemonConfig(msgspec.Struct, frozen=True):
    mountpoint: str = knob("/var/lib/lazylayer/store", "where the layer store is mounted")
    run_dir: str = knob("/run/lazylayer", "sockets (workers.sock, control.sock) and the pid file")
    log_level: str = knob("INFO", "DEBUG, INFO, WARNING or ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                          live=True)
    log_format: str = knob("text", "text or json (one object per line)", choices=("text", "json"), live=True)


@_section
class WorkersConfig(msgspec.Struct, frozen=True):
    count: int = knob(2, "fetcher workers the daemon spawns; 0 = external workers only", "processes", live=True,
                      minimum=0)
    heartbeat_interval: float = knob(1.0, "how often workers and front ping each other", "s", positive=True)
    heartbeat_liveness: int = knob(3, "missed heartbeats before a peer is declared dead", "beats", minimum=1)
    request_timeout: float = knob(60.0, "one fetch request, including re-dispatch; workers cut their registry "
                                        "waits to it, so a hung registry is EIO within it", "s", positive=True)
    resolve_timeout: float = knob(300.0, "one layer resolve (TOC fetch, check and registration: a 1M-entry TOC "
                                         "takes about 100 s); registry waits inside keep request_timeout", "s",
                                  positive=True)
    max_attempts: int = knob(3, "dispatches of one request before it fails", "attempts", minimum=1)
    restart_backoff_max: float = knob(30.0, "ceiling of the restart backoff of spawned workers", "s", minimum=0)
    restart_stable_after: float = knob(10.0, "uptime after which a restarted worker's backoff resets", "s", minimum=0)
    capacity: int = knob(2, "jobs one worker runs at once for one registry (threads; HTTP waits overlap)", "jobs",
                         minimum=1)
    max_registries: int = knob(4, "registries one worker serves at once, each with its own capacity slots "
                                  "(a stalled registry holds only its own)", "registries", minimum=1)
    drain_timeout: float = knob(30.0, "on SIGTERM, how long a worker finishes its jobs before handing them back", "s",
                                minimum=0)


@_section
class CacheConfig(msgspec.Struct, frozen=True):
    dir: str = knob("/var/cache/lazylayer", "LMDB environment directory")
    max_size: int = knob(8 << 30, "chunk data budget; eviction keeps the store below it", "bytes", live=True, minimum=0)
    map_size: int = knob(64 << 30, "LMDB map size (address space only; keep >= max_size / 0.85)", "bytes",
                         positive=True)
    max_readers: int = knob(1024, "LMDB reader slots (the first opener fixes it)", "slots", minimum=1)
    janitor_interval: float = knob(30.0, "how often read accesses (LRU) are applied and the cache trimmed", "s",
                                   positive=True)


@_section
class RegistryConfig(msgspec.Struct, frozen=True):
    plain_http: tuple[str, ...] = knob((), "hosts spoken to over plain HTTP (localhost, 127.0.0.1, ::1 always are)")
    skip_verify: tuple[str, ...] = knob((), "hosts whose TLS certificate is not verified")
    ca_file: str = knob("", "extra CA bundle (PEM) for registry TLS")
    credentials_file: str = knob("", "docker config.json with auths (default ~/.docker/config.json)")
    mirrors: dict[str, tuple[str, ...]] = knob({}, "HOST = [MIRROR, ...]: mirrors tried in order, then HOST itself")
    request_timeout: float = knob(30.0, "one HTTP request: connect, first byte, and the longest pause in a body", "s",
                                  positive=True)
    min_rate: int = knob(64 << 10, "slowest body accepted: a body of N bytes is cut off after "
                                   "request_timeout + N / min_rate; 0 = no total limit", "bytes/s", minimum=0)
    max_retries: int = knob(5, "retries on connection errors, 429 and 5xx", "retries", minimum=0)
    min_backoff: float = knob(0.03, "first retry backoff (doubles, with jitter)", "s", minimum=0)
    max_backoff: float = knob(30.0, "largest retry backoff", "s", minimum=0)
    coalesce_gap: int = knob(64 << 10, "ranges closer than this are fetched as one", "bytes", minimum=0)


@_section
class FuseConfig(msgspec.Struct, frozen=True):
    attr_timeout: float = knob(1.0, "kernel attribute cache lifetime of the store layout's own nodes", "s", minimum=0)
    entry_timeout: float = knob(1.0, "kernel dentry cache lifetime of the store layout's own nodes", "s", minimum=0)
    layer_timeout: float = knob(3600.0, "kernel cache lifetime of layer contents' attributes, names and absent "
                                "names (layers never change)", "s", minimum=0)
    allow_other: bool = knob(True, "let other users (containers) read the mount")
    store_group: str = knob("", "group (name or gid) that may use the layer store besides root; empty: root only")
    opaque_type: str = knob("trusted", "opaque-dir xattr reported: trusted, user or all",
                            choices=("trusted", "user", "all"))
    read_ahead_kb: int = knob(1024, "bdi read-ahead set on the mount (1024 = FUSE max request)", "KiB", minimum=0)
    read_ahead_chunks: int = knob(2, "chunks fetched ahead of a sequential reader", "chunks", minimum=0)
    neighbour_window: int = knob(256 << 10, "compressed bytes after a missed chunk fetched with it, in blob order (0: none)",
                                 "bytes", minimum=0)
    neighbour_ahead: int = knob(4 << 20, "compressed bytes past neighbour_window fetched by a second job that the miss "
                                "does not wait for (0: none; none in a layer whose landmark range is prefetched)", "bytes", minimum=0)
    neighbour_behind: int = knob(1 << 20, "compressed bytes before a missed chunk that second job fetches too (0: none)",
                                 "bytes", minimum=0)
    max_tasks: int = knob(64, "FUSE requests handled at once (reads waiting on fetches need room)", "requests",
                          minimum=1)


@_section
class PrefetchConfig(msgspec.Struct, frozen=True):
    enabled: bool = knob(True, "prefetch the landmark range when a layer is resolved")
    timeout: float = knob(0.0, "how long resolving a layer waits for its prefetch to complete: 0 = not at all, "
                               "as upstream's stargz-store (reads join the prefetch in flight); upstream's "
                               "snapshotter waits 10", "s", minimum=0)
    size: int = knob(0, "bytes to prefetch for layers without landmarks", "bytes", minimum=0)
    resolve_ttl: float = knob(120.0, "how long an unreferenced resolved layer stays resolved", "s", minimum=0)
    check_interval: float = knob(60.0, "how often a layer in use checks its blob still answers", "s", positive=True)
    image_layers: bool = knob(True, "when one layer of an image is first looked up, resolve all its layers at "
                                    "once, over every worker (a container needs them all)")
    profiles: str = knob("local", "learned access profiles replayed when an image is resolved: off, local (this "
                                  "cache's) or registry (also looked up as OCI referrers of the image)",
                         choices=("off", "local", "registry"))
    profile_record: bool = knob(True, "record which chunks each image reads first (merged into its profile)")
    profile_quiet: float = knob(30.0, "a recording ends after this long without a new chunk read", "s",
                                positive=True)
    profile_window: float = knob(300.0, "a recording ends this long after the image was first resolved", "s",
                                 positive=True)
    profile_max_size: int = knob(4 << 20, "largest profile document accepted (pulled, or replayed)", "bytes",
                                 positive=True)


@_section
class BackgroundConfig(msgspec.Struct, frozen=True):
    enabled: bool = knob(True, "fetch the rest of each layer at low priority")
    concurrency: int = knob(2, "background fetch requests in flight", "requests", minimum=1)
    quiet_period: float = knob(5.0, "foreground silence before background work resumes", "s", minimum=0)
    bandwidth_limit: int = knob(0, "background fetch bandwidth cap; 0 = none", "bytes/s", minimum=0)
    piece_size: int = knob(8 << 20, "compressed bytes fetched per background request", "bytes", positive=True)


@_section
class VerificationConfig(msgspec.Struct, frozen=True):
    require_toc_digest: bool = knob(True, "refuse layers whose descriptor lacks the TOC digest annotation")
    allow_unverified: bool = knob(False, "serve legacy stargz layers without chunk digests")


@_section
class FormatConfig(msgspec.Struct, frozen=True):
    max_toc_bytes: int = knob(64 << 20, "largest uncompressed TOC accepted", "bytes", positive=True)
    max_entries: int = knob(1_000_000, "most TOC entries accepted", "entries", minimum=1)
    chunk_size: int = knob(4 << 20, "convert: uncompressed chunk size", "bytes", positive=True)


@_section
class SourcesConfig(msgspec.Struct, frozen=True):
    order: tuple[str, ...] = knob(("oci-layout", "urls", "registry"), "blob source handlers tried in turn for each "
                                  "layer: built-ins oci-layout, urls, registry, or lazylayer.sources plug-ins")
    rules: dict[str, tuple[str, ...]] = knob({}, "PREFIX = [HANDLER, ...]: the order for refs under PREFIX (a "
                                             "registry host, host/repo/, oci:/dir); the longest prefix wins")


@_section
class DecompressorsConfig(msgspec.Struct, frozen=True):
    order: tuple[str, ...] = knob((), "layer formats asked in turn to claim a layer: built-ins gzip, zstd, or "
                                  "lazylayer.decompressors plug-ins; empty = built-ins, then every plug-in")


@_section
class MetricsConfig(msgspec.Struct, frozen=True):
    address: str = knob("", "HOST:PORT for Prometheus metrics; empty = off")


@_section
class SnapshotterConfig(msgspec.Struct, frozen=True):
    address: str = knob("/run/lazylayer/snapshotter.sock", "unix socket of `lazylayer snapshotter` (containerd's "
                                                           "proxy_plugins address)")
    root: str = knob("/var/lib/lazylayer/snapshotter", "snapshot metadata (LMDB) and the snapshots' upper dirs")
    resolve_timeout: float = knob(120.0, "how long a Prepare waits for the layer store to resolve a remote layer "
                                         "before containerd unpacks it instead", "s", positive=True)
    check_interval: float = knob(5.0, "how often the snapshotter checks the front was restarted (it then takes "
                                      "its layer references again)", "s", positive=True)
    metrics_address: str = knob("", "HOST:PORT for the snapshotter's Prometheus metrics; empty = off")


class Config(msgspec.Struct, frozen=True):
    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    workers: WorkersConfig = msgspec.field(default_factory=WorkersConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    fuse: FuseConfig = msgspec.field(default_factory=FuseConfig)
    prefetch: PrefetchConfig = msgspec.field(default_factory=PrefetchConfig)
    background: BackgroundConfig = msgspec.field(default_factory=BackgroundConfig)
    verification: VerificationConfig = msgspec.field(default_factory=VerificationConfig)
    format: FormatConfig = msgspec.field(default_factory=FormatConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    snapshotter: SnapshotterConfig = msgspec.field(default_factory=SnapshotterConfig)
    sources: SourcesConfig = msgspec.field(default_factory=SourcesConfig)
    decompressors: DecompressorsConfig = msgspec.field(default_factory=DecompressorsConfig)


class LoadedConfig(msgspec.Struct, frozen=True):
    """The effective config plus, for each ``section.key``, where its value came from, and the
    file that was read (None: no file; defaults and environment only)."""

    config: Config
    sources: dict[str, str]
    file: str | None = None

    def show(self) -> list[dict[str, Any]]:
        """Rows for `config show`: key, value, source, unit, doc."""
        rows = []
        for section in _keys(Config):
            values = getattr(self.config, section)
            for name in _keys(values):
                key = f"{section}.{name}"
                declared = knob_of(type(values), name)
                rows.append({
                    "key": key,
                    "value": redact(_plain(getattr(values, name))),
                    "source": self.sources.get(key, "default"),
                    "unit": declared.unit,
                    "doc": declared.doc,
                    "live": declared.live,
                })
        return rows


class ConfigChanges(msgspec.Struct, frozen=True):
    """What a reload changes: ``live`` knobs a running daemon applies, ``restart`` ones it cannot."""

    live: dict[str, Any]
    restart: dict[str, Any]


def config_changes(old: Config, new: Config) -> ConfigChanges:
    live, restart = {}, {}
    for section in _keys(Config):
        before, after = getattr(old, section), getattr(new, section)
        for name in _keys(before):
            if getattr(before, name) != getattr(after, name):
                target = live if knob_of(type(before), name).live else restart
                target[f"{section}.{name}"] = getattr(after, name)
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
    """Build the effective config from defaults, ``path`` (if given, else DEFAULT_CONFIG_PATH if
    it exists), the environment and ``overrides`` (``{"section.key": value}`` from CLI flags)."""
    env = os.environ if env is None else env
    config, sources = Config(), {}
    path = path or None  # LAZYLAYER_CONFIG="" means "no file given", as unset does
    file_path = Path(path) if path is not None else Path(DEFAULT_CONFIG_PATH)
    read = path is not None or file_path.exists()
    if read:
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
    return LoadedConfig(config, sources, str(file_path) if read else None)


class _EnvText(str):
    """A raw environment string, parsed by the target field's type."""

    def __new__(cls, value: str, var: str) -> "_EnvText":
        obj = super().__new__(cls, value)
        obj.var = var  # type: ignore[attr-defined]
        return obj


def _section_names() -> str:
    return ", ".join(_keys(Config))


def _env_key(var: str) -> str:
    rest = var[len(ENV_PREFIX):].lower()
    for section in _keys(Config):
        if rest.startswith(section + "_"):
            return f"{section}.{rest[len(section) + 1:]}"
    raise ConfigError(f"environment variable {var}: no config section matches (sections: {_section_names()})")


def _flatten(document: dict[str, Any], origin: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: top-level key {section!r} must be a [section] table")
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return flat


def _apply(config: Config, values: dict[str, Any], source: str, sources: dict[str, str]) -> Config:
    """``source`` is "file PATH", "env" or "flag"; every refusal starts with where the value came
    from (the file, the environment variable, the command line) so the operator knows what to fix."""
    for dotted, value in values.items():
        origin = value.var if isinstance(value, _EnvText) else {"flag": "command line"}.get(source, source)
        section_name, _, key = dotted.partition(".")
        if section_name not in _keys(Config):
            raise ConfigError(f"{origin}: unknown config section {section_name!r} (in {dotted!r}; "
                              f"sections: {_section_names()})")
        section = getattr(config, section_name)
        hints = get_type_hints(type(section))
        if key not in hints:
            known = ", ".join(_keys(section))
            raise ConfigError(f"{origin}: unknown config key {dotted!r} (known in [{section_name}]: {known})")
        declared = knob_of(type(section), key)
        try:
            typed = _coerce(value, hints[key], declared.unit in SIZE_UNITS)
            _check(typed, declared)
        except ValueError as exc:
            raise ConfigError(f"{origin}: config key {dotted!r}: {exc}") from None
        config = replace(config, **{section_name: replace(section, **{key: typed})})
        sources[dotted] = origin if isinstance(value, _EnvText) else source
    return config


def _check(value: Any, declared: Knob) -> None:
    """The knob's allowed values: its choices, or its range (numbers are finite too)."""
    if declared.choices and value not in declared.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(declared.choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    minimum = declared.minimum
    if minimum is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if value < minimum or (declared.positive and value == 0):
        raise ValueError(f"{value!r} is out of range (allowed: {'> 0' if declared.positive else f'>= {minimum}'})")


def _coerce(value: Any, kind: Any, size: bool) -> Any:
    """``value`` (from TOML, the environment or a flag) as ``kind``; ``size`` knobs also take
    strings with K/M/G/T suffixes. Raises ValueError saying what was expected."""
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if size and isinstance(value, str):
        return parse_size(value)
    if isinstance(value, _EnvText):
        return _parse_text(str(value), kind)
    if kind == tuple[str, ...]:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"{value!r} is not a list of strings")
    if kind == dict[str, tuple[str, ...]]:
        if isinstance(value, dict) and all(
            isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v) for v in value.values()
        ):
            return {str(k): tuple(v) for k, v in value.items()}
        raise ValueError(f"{value!r} is not a table of HOST = [strings]")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{value!r} is not {expected[kind]}" + (" or a size such as 8G" if size else ""))


def _parse_text(text: str, kind: Any) -> Any:
    """Environment syntax: lists are ';'-separated; tables are 'HOST=A,B;HOST2=C'."""
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in text.split(";") if part.strip())
    if kind == dict[str, tuple[str, ...]]:
        table: dict[str, tuple[str, ...]] = {}
        for item in filter(None, (part.strip() for part in text.split(";"))):
            host, sep, rest = item.partition("=")
            if not sep or not host.strip():
                raise ValueError(f"{item!r} is not HOST=VALUE[,VALUE]")
            table[host.strip()] = tuple(v.strip() for v in rest.split(",") if v.strip())
        return table
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not true or false")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
