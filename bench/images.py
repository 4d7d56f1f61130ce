"""The benchmark image: built from this machine's own files, pushed as gzip, converted to eStargz.

No internet is needed (only PyPI, for the Python layer's extra packages). Three layers:

1. rootfs - this Debian machine's system directories (capped per directory, huge files skipped),
   always including FIRST_FILES;
2. python - a site-packages tree at usr/local/lib/python3.11/site-packages (this venv's, plus
   PIP_PACKAGES installed with `pip install --target` for the full image);
3. data - ``bench/data.bin``, a file of realistically compressible bytes (the rootfs's files
   concatenated: gzip -6 ratio about 3, as limits.md §1) for the sequential and random reads.

The gzip image is pushed to ``REGISTRY/bench/image:gzip-<recipe>`` with lazylayer's own registry
client; `lazylayer convert` makes ``...:esgz-<recipe>`` from it, exactly as a user converts an
image. The app image of the peer comparison (bench/app.py) shares the rootfs and python layers
and adds a small app layer: ``...:app-gzip-<recipe>``, converted to ``...:app-esgz-<recipe>`` and,
with the app's recorded start files as the prefetch list, ``...:app-esgz-<recipe>-prefetch``. A stamp in the work dir records the result, so a rerun with the same recipe whose
registry storage still holds both manifests skips the build.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from bench import app
from bench.errors import BenchError
from bench.measure import MiB
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.manifests import get_manifest_bytes
from lazylayer.workers.registry.reference import parse_reference
from lazylayer.workers.registry.stores import RegistryStore

#: Bump when the way images are built changes: older stamps are then rebuilt.
BUILD_VERSION = 3
REPOSITORY = "bench/image"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SITE_PACKAGES = "usr/local/lib/python3.11/site-packages"
DATA_PATH = "bench/data.bin"

#: What `bash -l -c "python3 -c 'import json, email, http.client'"` opens on Debian 12 (from
#: `strace -f -e trace=openat,execve`, symlinks resolved, machine-specific files left out):
#: a shell start-up plus a Python start-up importing three stdlib packages. Files missing on
#: the machine that builds the image are left out of the list (the stamp records the result).
FIRST_FILES: tuple[str, ...] = (
    "/usr/bin/bash", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libtinfo.so.6", "/etc/ld.so.cache", "/etc/nsswitch.conf", "/etc/passwd",
    "/etc/profile", "/usr/bin/id", "/usr/lib/x86_64-linux-gnu/libselinux.so.1",
    "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0", "/usr/lib/locale/C.utf8/LC_CTYPE",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache", "/usr/share/locale/locale.alias",
    "/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libz.so.1",
    "/usr/lib/x86_64-linux-gnu/libexpat.so.1", "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/etc/ssl/openssl.cnf",
    "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
    *(f"/usr/lib/python3.11/__pycache__/{m}.cpython-311.pyc" for m in (
        "base64", "bisect", "calendar", "copyreg", "datetime", "enum", "functools", "ipaddress", "keyword",
        "locale", "operator", "quopri", "random", "reprlib", "selectors", "socket", "ssl", "string", "struct",
        "types", "warnings")),
    *(f"/usr/lib/python3.11/{pkg}/__pycache__/{m}.cpython-311.pyc" for pkg, mods in (
        ("collections", ("__init__", "abc")),
        ("email", ("__init__", "_encoded_words", "_parseaddr", "_policybase", "base64mime", "charset", "encoders",
                   "errors", "feedparser", "header", "iterators", "message", "parser", "quoprimime", "utils")),
        ("encodings", ("__init__", "aliases", "utf_8")),
        ("http", ("__init__", "client")),
        ("json", ("__init__", "decoder", "encoder", "scanner")),
        ("re", ("__init__", "_casefix", "_compiler", "_constants", "_parser")),
        ("urllib", ("__init__", "parse")),
    ) for m in mods),
)

#: The root's usr-merge symlinks, so paths like /lib64/ld-linux-x86-64.so.2 resolve in the image.
ROOT_SYMLINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}


@dataclass(frozen=True)
class Source:
    """A host directory walked in sorted order; regular files are taken until ``cap`` bytes."""

    path: str
    cap: int | None = None
    #: names directly under ``path`` that are skipped (docs, man pages, locales...)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    rootfs: tuple[Source, ...]
    python: tuple[Source, ...]
    #: installed from PyPI into the python layer (pinned: the same bytes on every machine)
    pip_packages: tuple[str, ...]
    data_size: int
    #: regular files larger than this are left out (a few giant libraries would dominate)
    largest_file: int = 48 * MiB

    def key(self) -> str:
        text = json.dumps([BUILD_VERSION, asdict(self), FIRST_FILES, app.SCRIPTS[self.name]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _venv_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


FULL = Recipe(
    name="full",
    rootfs=(
        Source("/etc"), Source("/usr/bin", 160 * MiB), Source("/usr/sbin"), Source("/usr/lib64"),
        Source("/usr/lib/python3.11"), Source("/usr/lib/python3", 32 * MiB),
        Source("/usr/lib/x86_64-linux-gnu", 200 * MiB),
        Source("/usr/share", 120 * MiB, exclude=("doc", "man", "info", "locale", "package-lists")),
    ),
    python=(Source(_venv_site_packages()),),
    pip_packages=("numpy==1.26.4", "pandas==2.2.3", "rich==13.9.4"),
    data_size=256 * MiB,
)

QUICK = Recipe(
    name="quick",
    rootfs=(),  # FIRST_FILES only
    python=(Source(_venv_site_packages(), 2 * MiB),),
    pip_packages=(),
    data_size=16 * MiB,
)

RECIPES = {r.name: r for r in (FULL, QUICK)}


@dataclass(frozen=True)
class LayerInfo:
    name: str
    digest: str
    size: int
    uncompressed_size: int
    entries: int


@dataclass(frozen=True)
class BenchImage:
    """A built image; refs are made for the registry host of this run (the port changes)."""

    recipe: str
    key: str
    gzip_manifest: str
    esgz_manifest: str
    gzip_layers: tuple[LayerInfo, ...]
    esgz_layers: tuple[LayerInfo, ...]
    #: image paths (no leading /) read for "time to first byte"
    first_files: tuple[str, ...]
    first_bytes: int
    data_path: str
    data_size: int
    chunk_size: int
    #: the app image (bench/app.py): layers rootfs, python, app, without and with a landmark
    app_esgz_manifest: str
    app_prefetch_manifest: str
    app_layers: tuple[LayerInfo, ...]
    app_prefetch_layers: tuple[LayerInfo, ...]
    #: image paths (no leading /) of the files the app's start opens: the prefetch list
    app_files: tuple[str, ...]
    #: what the app prints (every chroot run must print it too)
    app_output: str
    registry_host: str = field(default="", compare=False)

    @property
    def gzip_ref(self) -> str:
        return f"{self.registry_host}/{REPOSITORY}:gzip-{self.recipe}"

    @property
    def esgz_ref(self) -> str:
        return f"{self.registry_host}/{REPOSITORY}:esgz-{self.recipe}"

    @property
    def app_ref(self) -> str:
        return f"{self.registry_host}/{REPOSITORY}:app-esgz-{self.recipe}"

    @property
    def app_prefetch_ref(self) -> str:
        return f"{self.registry_host}/{REPOSITORY}:app-esgz-{self.recipe}-prefetch"

    @property
    def total_size(self) -> int:
        return sum(layer.uncompressed_size for layer in self.gzip_layers)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(gzip_ref=self.gzip_ref, esgz_ref=self.esgz_ref, app_ref=self.app_ref,
                   app_prefetch_ref=self.app_prefetch_ref, total_size=self.total_size)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], registry_host: str) -> "BenchImage":
        names = {f for f in cls.__dataclass_fields__} - {"registry_host"}
        values = {k: raw[k] for k in names}
        for name in ("gzip_layers", "esgz_layers", "app_layers", "app_prefetch_layers"):
            values[name] = tuple(LayerInfo(**l) for l in raw[name])
        values["first_files"] = tuple(raw["first_files"])
        values["app_files"] = tuple(raw["app_files"])
        return cls(**values, registry_host=registry_host)


Step = Callable[[str, int | None], Any]  # (description, total bytes) -> context manager with .advance()


# -- choosing files ----------------------------------------------------------------------------

def _walk(source: Source, largest: int) -> Iterator[str]:
    """Host paths of ``source`` (dirs, symlinks, regular files) in sorted order, until the cap."""
    taken = 0
    if not os.path.isdir(source.path):
        return
    for top, dirs, files in os.walk(source.path):
        dirs.sort()
        if top == source.path:
            dirs[:] = [d for d in dirs if d not in source.exclude]
        yield top
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                yield path
            elif stat.S_ISREG(st.st_mode) and st.st_size <= largest:
                if source.cap is not None and taken + st.st_size > source.cap:
                    return
                taken += st.st_size
                yield path


def first_files() -> list[str]:
    """FIRST_FILES present here, symlinks resolved (an absolute link would point out of the
    image when read through a mount), duplicates dropped."""
    out: list[str] = []
    for path in FIRST_FILES:
        real = os.path.realpath(path)
        if os.path.isfile(real) and real not in out:
            out.append(real)
    return out


def _with_parents(paths: list[str]) -> list[str]:
    """Every path plus its ancestor directories, sorted so a directory precedes its contents."""
    out = set()
    for path in paths:
        out.add(path)
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            out.add(parent)
            parent = os.path.dirname(parent)
    return sorted(out)


def rootfs_paths(recipe: Recipe, extra: list[str]) -> list[str]:
    """The rootfs's host paths: FIRST_FILES, ``extra`` (what the app's start touches), the sources."""
    chosen = first_files() + [p for p in FIRST_FILES if os.path.islink(p)] + extra
    for source in recipe.rootfs:
        chosen.extend(_walk(source, recipe.largest_file))
    return _with_parents(chosen)


# -- writing layers ------------------------------------------------------------------------------

class _HashingWriter(io.RawIOBase):
    """Passes writes through to ``out`` while hashing them (diff_id and blob digest in one pass)."""

    def __init__(self, out: BinaryIO, on_write: Callable[[int], None] | None = None) -> None:
        self.out, self.sha, self.size, self.on_write = out, hashlib.sha256(), 0, on_write

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.out.write(data)
        self.size += len(data)
        if self.on_write:
            self.on_write(len(data))
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


@dataclass(frozen=True)
class BuiltLayer:
    name: str
    path: Path
    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    entries: int
    #: layer descriptor annotations (an eStargz layer's TOC digest)
    annotations: dict[str, str] = field(default_factory=dict)


def write_layer(name: str, out_path: Path, members: Iterator[tuple[str, str]], advance: Callable[[int], None]
                ) -> BuiltLayer:
    """A gzip (-6) tar of ``members``: (host path, name in the layer) pairs; host "" makes the
    entry up (see _made_up)."""
    entries = 0
    with open(out_path, "wb") as raw:
        blob = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=6, mtime=0) as gz:
            diff = _HashingWriter(gz, advance)
            with tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for host, arcname in members:
                    if host == "":
                        tar.addfile(_made_up(arcname))
                    else:
                        try:
                            tar.add(host, arcname, recursive=False)
                        except OSError:
                            continue  # vanished or unreadable meanwhile: the layer simply lacks it
                    entries += 1
    return BuiltLayer(name, out_path, blob.digest, blob.size, diff.digest, diff.size, entries)


def _made_up(arcname: str) -> tarfile.TarInfo:
    """An entry with no host counterpart: a usr-merge symlink at the root, else a directory."""
    info = tarfile.TarInfo(arcname)
    if arcname in ROOT_SYMLINKS:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, ROOT_SYMLINKS[arcname], 0o777
    else:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _image_name(host_path: str) -> str:
    return host_path.lstrip("/")


def rootfs_members(recipe: Recipe, extra: list[str]) -> Iterator[tuple[str, str]]:
    yield from (("", name) for name in sorted(ROOT_SYMLINKS))
    yield from ((p, _image_name(p)) for p in rootfs_paths(recipe, extra) if _image_name(p) not in ROOT_SYMLINKS)


def python_members(recipe: Recipe, pip_dir: Path | None) -> Iterator[tuple[str, str]]:
    # the pip packages first: where this venv has the same package, the pinned one wins
    roots = ([Source(str(pip_dir))] if pip_dir else []) + list(recipe.python)
    seen = set(_with_parents([os.path.dirname(SITE_PACKAGES)]))
    yield from (("", parent) for parent in sorted(seen))
    for source in roots:
        for host in _walk(source, recipe.largest_file):
            rel = os.path.relpath(host, source.path)
            name = SITE_PACKAGES if rel == "." else f"{SITE_PACKAGES}/{rel}"
            if name not in seen:
                seen.add(name)
                yield host, name


def make_data_file(path: Path, size: int, sources: list[str]) -> None:
    """``size`` bytes: the regular files among ``sources`` concatenated (repeated if short)."""
    files = [p for p in sources if os.path.isfile(p) and not os.path.islink(p)]
    if not files:
        raise BenchError("no input files for the data file")
    left = size
    with open(path, "wb") as out:
        while left > 0:
            for host in files:
                if left <= 0:
                    break
                try:
                    with open(host, "rb") as src:
                        data = src.read(left)
                except OSError:
                    continue
                out.write(data)
                left -= len(data)


def pip_install(packages: tuple[str, ...], target: Path) -> Path:
    """Install ``packages`` into ``target`` once (a marker file says it is complete)."""
    done = target / ".bench-complete"
    if done.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--only-binary=:all:", "--target", str(target), *packages]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"pip install {' '.join(packages)} failed: {result.stderr.strip()[-400:]}")
    # .pyc files as an image has them (pip compiles by default); unchecked-hash: valid whatever
    # mtimes the layer store reports, so no run compiles or writes them
    compiled = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                               "unchecked-hash", str(target)], capture_output=True, text=True)
    if compiled.returncode != 0:
        raise BenchError(f"compileall {target} failed: {compiled.stdout.strip()[-400:]}")
    done.touch()
    return target


# -- building, pushing, converting -----------------------------------------------------------------

CHUNK_SIZE = 4 * MiB


def _stamp_path(workdir: Path, recipe: Recipe) -> Path:
    return workdir / "images" / f"{recipe.name}.json"


def _has_manifest(client: RegistryClient, ref: str) -> bool:
    try:
        get_manifest_bytes(client, parse_reference(ref))
    except Exception:  # any failure means "not usable": rebuild
        return False
    return True


def cached_image(workdir: Path, recipe: Recipe, host: str, client: RegistryClient) -> BenchImage | None:
    """The image a previous run built with this recipe, if the registry storage still holds it."""
    stamp = _stamp_path(workdir, recipe)
    try:
        raw = json.loads(stamp.read_text())
        image = BenchImage.from_dict(raw, host)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if image.key != recipe.key():
        return None
    ok = all(_has_manifest(client, f"{host}/{REPOSITORY}@{d}")
             for d in (image.gzip_manifest, image.esgz_manifest, image.app_esgz_manifest, image.app_prefetch_manifest))
    return image if ok else None


def build_image(workdir: Path, recipe: Recipe, host: str, step: Step) -> BenchImage:
    """Build (or reuse) the image of ``recipe`` in the registry at ``host``."""
    client = RegistryClient()
    try:
        cached = cached_image(workdir, recipe, host, client)
        if cached is not None:
            return cached
        build = workdir / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        try:
            image = _build(workdir, build, recipe, host, client, step)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    finally:
        client.close()
    stamp = _stamp_path(workdir, recipe)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(image.to_dict(), indent=2, sort_keys=True))
    return image


def _estimate(members: list[tuple[str, str]]) -> int:
    total = 0
    for host, _ in members:
        if host:
            try:
                st = os.lstat(host)
            except OSError:
                continue
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _build(workdir: Path, build: Path, recipe: Recipe, host: str, client: RegistryClient, step: Step) -> BenchImage:
    pip_dir = pip_install(recipe.pip_packages, workdir / f"pip-{recipe.key()}") if recipe.pip_packages else None
    site = pip_dir or Path(recipe.python[0].path)
    app_dir = build / "app"
    trace = app.record(app.write_app(app_dir, recipe.name), site)
    rootfs = list(rootfs_members(recipe, app.rootfs_files(trace, site, app_dir)))
    data_file = build / "data.bin"
    make_data_file(data_file, recipe.data_size, [h for h, _ in rootfs if h])
    plan = [("rootfs", rootfs), ("python", list(python_members(recipe, pip_dir))),
            ("data", [("", "bench"), (str(data_file), DATA_PATH)]),
            ("app", [(str(app_dir), app.APP_DIR), (str(app_dir / "main.py"), f"{app.APP_DIR}/main.py")])]
    built = {}
    for name, members in plan:
        with step(f"build {name} layer", _estimate(members)) as bar:
            built[name] = write_layer(name, build / f"{name}.tar.gz", iter(members), bar.advance)
    layers = [built["rootfs"], built["python"], built["data"]]
    app_layers = [built["rootfs"], built["python"], built["app"]]
    gzip_ref = f"{host}/{REPOSITORY}:gzip-{recipe.name}"
    gzip_manifest = push_image(client, gzip_ref, layers, step)
    app_gzip_ref = f"{host}/{REPOSITORY}:app-gzip-{recipe.name}"
    push_image(client, app_gzip_ref, app_layers, step)
    app_files = [n for n in (app.image_name(h, site, app_dir, SITE_PACKAGES) for h in trace.opened) if n]
    converted = convert(gzip_ref, f"{host}/{REPOSITORY}:esgz-{recipe.name}")
    app_converted = convert(app_gzip_ref, f"{host}/{REPOSITORY}:app-esgz-{recipe.name}")

    def infos(built_layers: list[BuiltLayer], result: dict[str, Any]) -> tuple[LayerInfo, ...]:
        return tuple(LayerInfo(l.name, c["digest"], c["size"], l.uncompressed_size, l.entries)
                     for l, c in zip(built_layers, result["manifests"][0]["layers"]))

    # The landmark tag, layer by layer: `lazylayer convert IMAGE --prefetch-list` wants every
    # listed path in every layer, so each layer gets the paths it holds (as ctr-remote does).
    landmarked = []
    for layer in app_layers:
        names = {name for _, name in dict(plan)[layer.name]}
        listed = [n for n in app_files if n in names]
        landmarked.append(convert_layer(layer, build / f"{layer.name}-prefetch.esgz", listed))
    app_prefetch_manifest = push_image(client, f"{host}/{REPOSITORY}:app-esgz-{recipe.name}-prefetch",
                                       landmarked, step)

    first = first_files()
    return BenchImage(
        recipe=recipe.name, key=recipe.key(), gzip_manifest=gzip_manifest, esgz_manifest=converted["digest"],
        gzip_layers=tuple(LayerInfo(l.name, l.digest, l.size, l.uncompressed_size, l.entries) for l in layers),
        esgz_layers=infos(layers, converted), first_files=tuple(_image_name(p) for p in first),
        first_bytes=sum(os.path.getsize(p) for p in first), data_path=DATA_PATH, data_size=recipe.data_size,
        chunk_size=CHUNK_SIZE, app_esgz_manifest=app_converted["digest"], app_prefetch_manifest=app_prefetch_manifest,
        app_layers=infos(app_layers, app_converted),
        app_prefetch_layers=tuple(LayerInfo(l.name, l.digest, l.size, l.uncompressed_size, l.entries)
                                  for l in landmarked),
        app_files=tuple(app_files), app_output=trace.output, registry_host=host)


def push_image(client: RegistryClient, ref: str, layers: list[BuiltLayer], step: Step) -> str:
    """Push the layers, a minimal config and an OCI manifest; returns the manifest digest."""
    store = RegistryStore(client, parse_reference(ref))
    for layer in layers:
        with open(layer.path, "rb") as f, step(f"push {layer.name} layer", layer.size) as bar:
            store.put_blob(layer.digest, layer.size, f, progress=bar.advance)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    store.put_blob(config_digest, len(config), io.BytesIO(config))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.size,
                    **({"annotations": l.annotations} if l.annotations else {})} for l in layers],
    }).encode()
    return store.put_document(manifest, OCI_MANIFEST, store.tag)


def convert_layer(layer: BuiltLayer, out: Path, prefetch: list[str]) -> BuiltLayer:
    """`lazylayer convert LAYER.tar.gz OUT --prefetch-list FILE`: one eStargz layer, ``prefetch``
    (image paths) first, before its landmark."""
    listing = out.with_suffix(".prefetch.txt")
    listing.write_text("".join(f"/{name}\n" for name in prefetch))
    result = convert(str(layer.path), str(out), listing if prefetch else None)
    return BuiltLayer(layer.name, out, result["blob_digest"], result["blob_size"], result["diff_id"],
                      layer.uncompressed_size, layer.entries, result["annotations"])


def convert(src: str, dest: str, prefetch_list: Path | None = None) -> dict[str, Any]:
    """`lazylayer convert SRC DEST [--prefetch-list FILE]` as a user runs it (its progress bar
    shows on a terminal)."""
    command = [sys.executable, "-m", "lazylayer.daemon.cli.main", "convert", src, dest,
               "--chunk-size", str(CHUNK_SIZE), "--json"]
    if prefetch_list is not None:
        command += ["--prefetch-list", str(prefetch_list)]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "LAZYLAYER_CONFIG": ""})
    if result.returncode != 0:
        raise BenchError(f"lazylayer convert {src} {dest} failed (exit {result.returncode})")
    return json.loads(result.stdout)
