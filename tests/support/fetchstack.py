"""The whole fetch path for tests, with real parts: registry, eStargz image, LMDB store, worker
processes, pool and `Remote` — everything but FUSE.

API (all paths are real; nothing here is a mock):

Images (sync; build once per module):
    trees = default_trees(workdir)                     # 3 source trees: multi-chunk files, a
                                                       # prefetch list, symlinks, hardlinks, empty
                                                       # files, nested dirs, a .no.prefetch layer
    image = push_image_trees(registry, "fetch/app", "v1", trees, chunk_size=64 << 10)
    image.ref                                          # "127.0.0.1:PORT/fetch/app:v1"
    image.ref_via(proxy.host)                          # the same image through a FaultProxy
    image.layers[i].{root, digest, size, toc_digest, blob, result, prefetch}
    image.layers[i].descriptor()                       # daemon.remote.LayerDescriptor
    ImageTree(root, prefetch=(), annotate=True, toc_digest=None, level=6, corrupt=None)
        # annotate=False pushes without annotations; toc_digest overrides the annotation;
        # level is the gzip level (0 = stored blocks: payload bytes appear verbatim in the blob);
        # corrupt=b"..." flips a byte where those bytes first appear (the registry then serves
        # a blob whose digest is right but whose chunk no longer matches its TOC digest)

Stack (async, inside trio):
    async with open_fetch_stack(workdir, workers=2, capacity=1, config={"registry": {...}}) as s:
        s.remote                                       # daemon.remote.Remote
        s.pool, s.store (read-only front handle), s.settings (FetchSettings)
        s.cache_dir, s.config_path, s.endpoint, s.run_dir
        s.worker_command()                             # argv of one `lazylayer worker` (exec)
        await s.start_external_worker()                # a worker outside the pool (trio.Process)
    ``workers=0`` spawns none (external workers only). ``config`` is merged into the TOML config
    file workers read (``--config``); FetchSettings come from the same config unless given.

Reading through the stack:
    record = await s.remote.resolve_layer(image.ref, image.layers[0].descriptor())
    data = await read_path(s.remote, image.ref, record, "usr/bin/tool", piece=1 << 20)
    expected_files(layer.root)                         # {path: bytes} of the source tree
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from lazylayer.daemon.pool import WorkerPool
from lazylayer.daemon.fetchsettings import FetchSettings
from lazylayer.daemon.remote import EXCLUSIVE_KINDS, LayerDescriptor, Remote
from lazylayer.shared.config import load_config
from lazylayer.shared.estargz.annotations import TOC_DIGEST_ANNOTATION
from lazylayer.shared.estargz.writer import ConvertResult, WriterOptions, convert_dir
from lazylayer.shared.store.env import Store, StoreOptions, open_store
from lazylayer.shared.store.layers import LayerRecord
from lazylayer.shared.store.metadata import Metadata
from tests.support.registry import Layer, RunningRegistry, digest_of, push_image

HEARTBEAT = 0.2
QUIET = 0.2
#: [fuse] settings under which a cold read fetches only its own chunks (no neighbours of a miss)
NO_NEIGHBOURS = {"neighbour_window": 0, "neighbour_ahead": 0, "neighbour_behind": 0}
#: test chunk size: small, so modest files span many chunks
CHUNK_SIZE = 64 << 10
#: the default prefetch list of the first tree
PREFETCH = ("etc/app.conf", "usr/bin/tool")


# -- images ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageTree:
    root: Path
    prefetch: tuple[str, ...] = ()
    annotate: bool = True
    toc_digest: str | None = None
    level: int = 6
    #: flip the first byte of the blob's first occurrence of these bytes before pushing
    corrupt: bytes | None = None


@dataclass(frozen=True)
class ImageLayer:
    root: Path
    prefetch: tuple[str, ...]
    blob: bytes
    result: ConvertResult
    annotations: dict[str, str]

    @property
    def digest(self) -> str:
        return digest_of(self.blob)

    @property
    def size(self) -> int:
        return len(self.blob)

    @property
    def toc_digest(self) -> str:
        return self.result.toc_digest

    def descriptor(self) -> LayerDescriptor:
        return LayerDescriptor(self.digest, self.size, "application/vnd.oci.image.layer.v1.tar+gzip",
                               dict(self.annotations))


@dataclass(frozen=True)
class PushedImage:
    registry: RunningRegistry
    repository: str
    tag: str
    manifest_digest: str
    layers: tuple[ImageLayer, ...]

    @property
    def ref(self) -> str:
        return self.ref_via(self.registry.host)

    def ref_via(self, host: str) -> str:
        return f"{host}/{self.repository}:{self.tag}"


def _content(rng: random.Random, size: int) -> bytes:
    """Half random, half repetitive: compresses, but not to nothing."""
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(512) + (b"lazylayer %d " % rng.randrange(1000)) * 40
    return bytes(out[:size])


def default_trees(workdir: Path, big_file: int = 300 << 10) -> list[ImageTree]:
    """Three layer trees under ``workdir``: (1) a prefetch list, a multi-chunk binary, symlinks
    (absolute, relative, dangling), a hardlink, empty files; (2) no prefetch list, a file of
    many chunks, deep dirs, a hardlink across dirs; (3) small files only."""
    rng = random.Random(5)
    roots = [workdir / f"tree{i}" for i in (1, 2, 3)]
    for root in roots:
        if root.exists():
            shutil.rmtree(root)
    one, two, three = roots
    files = {
        one / "etc/app.conf": b"answer = 42\n",
        one / "usr/bin/tool": _content(rng, big_file),
        one / "usr/lib/libx.so.1": _content(rng, 150 << 10),
        one / "usr/share/doc/README": b"read me\n" * 100,
        one / "var/empty-file": b"",
        two / "opt/data/blob.bin": _content(rng, 3 * big_file + 12345),
        two / "opt/data/deep/a/b/c/leaf.txt": b"leaf\n",
        two / "opt/exact": _content(rng, CHUNK_SIZE),
        three / "srv/one.txt": b"1\n",
        three / "srv/two.txt": b"22\n",
        three / "srv/empty": b"",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (one / "usr/bin/tool").chmod(0o755)
    (one / "usr/lib/libx.so").symlink_to("libx.so.1")
    (one / "usr/bin/abs-link").symlink_to("/usr/bin/tool")
    (one / "usr/bin/dangling").symlink_to("../nowhere")
    os.link(one / "usr/bin/tool", one / "usr/bin/tool-hardlink")
    os.link(two / "opt/data/blob.bin", two / "opt/blob-link")
    (two / "opt/emptydir").mkdir()
    return [ImageTree(one, PREFETCH), ImageTree(two), ImageTree(three)]


def push_image_trees(registry: RunningRegistry, repository: str, tag: str, trees: list[ImageTree],
                     *, chunk_size: int = CHUNK_SIZE) -> PushedImage:
    """Convert each tree with our writer and push them as one image (bottom layer first)."""
    layers: list[ImageLayer] = []
    pushed: list[Layer] = []
    for tree in trees:
        out = io.BytesIO()
        result = convert_dir(tree.root, out, WriterOptions(chunk_size=chunk_size, prefetch=tree.prefetch,
                                                          workers=1, compression_level=tree.level))
        blob = out.getvalue()
        if tree.corrupt is not None:
            at = blob.index(tree.corrupt)
            blob = blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1:]
        annotations = dict(result.annotations()) if tree.annotate else {}
        if tree.toc_digest is not None:
            annotations[TOC_DIGEST_ANNOTATION] = tree.toc_digest
        layers.append(ImageLayer(tree.root, tree.prefetch, blob, result, annotations))
        pushed.append(Layer(blob, annotations=annotations, diff_id=result.diff_id))
    manifest_digest, _ = push_image(registry, repository, tag, pushed)
    return PushedImage(registry, repository, tag, manifest_digest, tuple(layers))


def expected_files(root: Path) -> dict[str, bytes]:
    """Every regular file of a source tree (hardlinks included), by layer-relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


# -- the stack -------------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class FetchStack:
    run_dir: Path
    cache_dir: Path
    config_path: Path
    capacity: int
    settings: FetchSettings
    store: Store
    pool: WorkerPool = field(init=False)
    remote: Remote = field(init=False)

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.run_dir}/workers.sock"

    def worker_command(self, capacity: int | None = None) -> list[str]:
        return [sys.executable, "-m", "lazylayer.workers.main", "--config", str(self.config_path),
                "--endpoint", self.endpoint, "--cache-dir", str(self.cache_dir),
                "--capacity", str(capacity or self.capacity), "--heartbeat-interval", str(HEARTBEAT),
                "--heartbeat-liveness", "3", "--drain-timeout", "5", "--log-level", "WARNING"]

    async def start_external_worker(self, capacity: int | None = None) -> trio.Process:
        return await trio.lowlevel.open_process(self.worker_command(capacity))


@contextlib.asynccontextmanager
async def open_fetch_stack(workdir: Path, *, workers: int = 2, capacity: int = 1,
                           config: dict[str, dict[str, Any]] | None = None,
                           settings: FetchSettings | None = None) -> AsyncIterator[FetchStack]:
    """A cold cache in ``workdir``, a pool with ``workers`` spawned real worker processes (0:
    none) and a Remote over both. Waits until the spawned workers are connected."""
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="ll-fetch-", dir="/tmp"))  # ipc paths must be short
    cache_dir = workdir / "cache"
    sections: dict[str, dict[str, Any]] = {
        "daemon": {"run_dir": str(run_dir)},
        "cache": {"dir": str(cache_dir), "map_size": 4 << 30, "max_size": 2 << 30},
        "workers": {"heartbeat_interval": HEARTBEAT, "request_timeout": 30.0},
        "registry": {"max_retries": 2, "max_backoff": 1.0},
        "background": {"quiet_period": QUIET},
    }
    for section, values in (config or {}).items():
        sections.setdefault(section, {}).update(values)
    config_path = write_config(workdir / "lazylayer.toml", sections)
    loaded = load_config(config_path, env={}).config
    store = open_store(StoreOptions.from_config(loaded.cache, str(cache_dir)), readonly=True)
    stack = FetchStack(run_dir, cache_dir, config_path, capacity, settings or FetchSettings.from_config(loaded),
                       store)
    try:
        stack.pool = WorkerPool(stack.endpoint, spawn=workers, worker_command=stack.worker_command(),
                                heartbeat_interval=HEARTBEAT, heartbeat_liveness=3,
                                quiet_period=loaded.background.quiet_period, restart_backoff=0.1,
                                max_attempts=loaded.workers.max_attempts, stop_timeout=10.0,
                                exclusive_kinds=EXCLUSIVE_KINDS)
        async with stack.pool:
            stack.remote = Remote(stack.pool, store, stack.settings)
            if workers:
                with trio.fail_after(60):
                    await stack.pool.wait_workers(workers)
            yield stack
    finally:
        store.close()
        shutil.rmtree(run_dir, ignore_errors=True)


async def read_path(remote: Remote, ref: str, record: LayerRecord, path: str, piece: int = 1 << 20) -> bytes:
    """A whole file of a registered layer through `Remote.read`, ``piece`` bytes at a time."""
    meta = Metadata(remote.store)
    node = meta.resolve(record.root, path)
    attr = meta.getattr(node)
    assert attr is not None
    out = bytearray()
    while len(out) < attr.size:
        out += await remote.read(ref, record, node, attr.size, len(out), piece)
    return bytes(out)
