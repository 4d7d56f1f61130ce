"""`lazylayer demo [--image REF]`: the main job, end to end, on this machine.

Without ``--image`` it starts an embedded registry (Debian's docker-registry on a free loopback
port), builds an ordinary gzip image from this machine's files (the Python 3.11 standard library
and /usr/share/doc) as an OCI layout, and converts it to eStargz into that registry with
`convert_image`, as a user would with `lazylayer convert`. Then, for either image, it starts a
real `lazylayer daemon` (2 workers, its own mountpoint, cache and run dir under the work dir),
mounts the image with `lazylayer mount`, and uses it: a file read, a directory walk (metadata
only) and a Python interpreter whose whole standard library comes from the lazily mounted image.
It prints `lazylayer status` and a summary of how few bytes that took, unmounts and stops.

The work dir (default /var/tmp/lazylayer-demo) keeps the built image and the cache, so a second
run starts warm; ``--cold`` empties the cache first.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lazylayer.daemon.cli import output
from lazylayer.daemon.control import call
from lazylayer.shared.errors import LazyLayerError, MountError
from lazylayer.shared.procs import die_with_parent, stop_process

HELP = "run the main job: registry + eStargz image (built here by default), daemon, mount, use, status"

#: what the default image is made of: (directory on this machine, its path in the image)
SOURCES = (("/usr/lib/python3.11", "usr/lib/python3.11"), ("/usr/share/doc", "usr/share/doc"))
DEMO_REPOSITORY = "lazylayer/demo"
LAZYLAYER = [sys.executable, "-m", "lazylayer.daemon.cli.main"]
#: what the mounted interpreter runs: imports pulled lazily from the image's stdlib
PROGRAM = ("import json, email.parser, http.client, decimal, sys; "
           "print(json.dumps({'python': sys.version.split()[0], 'stdlib': sys.prefix}))")


@dataclass
class Summary:
    image: str
    layers: int
    image_bytes: int
    files: int
    mount_seconds: float
    first_read_seconds: float
    python_seconds: float
    #: sys.prefix of the interpreter run on the mount (proves its stdlib came from the image)
    python_prefix: str
    fetched_bytes: int

    def rows(self) -> list[list[Any]]:
        mib = 1 << 20
        return [["image", self.image], ["layers", self.layers],
                ["image size (compressed)", f"{self.image_bytes / mib:.1f} MiB"],
                ["files in the mounted image", self.files],
                ["lazylayer mount", f"{self.mount_seconds:.2f} s"],
                ["first file read", f"{self.first_read_seconds * 1000:.1f} ms"],
                ["python3 with the image's stdlib", f"{self.python_seconds:.2f} s"],
                ["bytes fetched for all of it", f"{self.fetched_bytes / mib:.1f} MiB "
                 f"({100 * self.fetched_bytes / max(self.image_bytes, 1):.1f} % of the image)"]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", metavar="REF", help="use this eStargz image instead of building one "
                        "(registry settings from --config)")
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    parser.add_argument("--work-dir", default="/var/tmp/lazylayer-demo", help="image build, cache and mountpoint")
    parser.add_argument("--cold", action="store_true", help="empty the cache first")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")


def run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.cold:
        shutil.rmtree(work / "cache", ignore_errors=True)
    with ExitStack() as stack:
        ref = args.image
        if ref is None:
            from lazylayer.workers.registry.local import start_local_registry

            say(args, "starting the embedded registry")
            registry = stack.enter_context(start_local_registry(work / "registry"))
            ref = demo_image(args, work, registry.host)
        run_dir = Path(tempfile.mkdtemp(prefix="lazylayer-demo-", dir="/tmp"))  # ipc paths must be short
        stack.callback(shutil.rmtree, run_dir, True)
        daemon = stack.enter_context(Daemon(work, run_dir, args.config))
        summary = use_image(args, daemon, ref, work / "image")
    if args.json:
        output.print_json(asdict(summary))
    else:
        output.print_table("lazylayer demo", ["", ""], summary.rows())
    return 0


def say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(f"== {text}", file=sys.stderr, flush=True)


# -- the default image -------------------------------------------------------------------------

def demo_image(args: argparse.Namespace, work: Path, host: str) -> str:
    """Build the gzip image as an OCI layout (once per work dir), convert it into the registry."""
    from lazylayer.shared.estargz.writer import WriterOptions
    from lazylayer.workers.imageconvert import convert_image

    layout = work / "oci"
    if not (layout / "index.json").exists():
        say(args, f"building a gzip image from {', '.join(s for s, _ in SOURCES)}")
        build_layout(layout, work / "build")
    ref = f"{host}/{DEMO_REPOSITORY}:esgz"
    say(args, f"converting it to eStargz: {ref}")
    result = convert_image(f"oci:{layout}:gzip", ref, options=WriterOptions(),
                           progress_factory=(lambda *a: output.progress(*a)) if not args.json else None)
    say(args, f"pushed {result.digest}")
    return ref


def build_layout(layout: Path, build: Path) -> None:
    from lazylayer.workers.registry.layout import OCILayout
    from lazylayer.workers.registry.manifests import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST

    build.mkdir(parents=True, exist_ok=True)
    store = OCILayout(layout, "gzip", create=True)
    layers, diff_ids = [], []
    for source, inside in SOURCES:
        blob, diff_id = gzip_layer(Path(source), inside, build)
        with open(blob, "rb") as f:
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            f.seek(0)
            store.put_blob(digest, blob.stat().st_size, f)
        layers.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": blob.stat().st_size})
        diff_ids.append(diff_id)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    store.put_blob(config_digest, len(config), io.BytesIO(config))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                           "layers": layers}).encode()
    store.put_document(manifest, OCI_MANIFEST, "gzip")
    shutil.rmtree(build)


def gzip_layer(source: Path, inside: str, build: Path) -> tuple[Path, str]:
    """``source`` as a gzip'd tar whose members sit under ``inside``; returns (path, DiffID)."""
    tar_path, blob = build / f"{source.name}.tar", build / f"{source.name}.tar.gz"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        parents = Path(inside).parents
        for parent in reversed([p for p in parents if str(p) != "."]):
            info = tarfile.TarInfo(str(parent))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(source, arcname=inside, filter=lambda m: m if m.isfile() or m.isdir() or m.issym() else None)
    with open(tar_path, "rb") as f:
        diff_id = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        f.seek(0)
        with gzip.open(blob, "wb", compresslevel=6) as out:
            shutil.copyfileobj(f, out, 1 << 20)
    tar_path.unlink()
    return blob, diff_id


# -- the daemon and the mount ----------------------------------------------------------------

class Daemon:
    """A `lazylayer daemon` for the demo: 2 workers, mountpoint and cache in the work dir."""

    def __init__(self, work: Path, run_dir: Path, config: str | None) -> None:
        self.work, self.run_dir = work, run_dir
        self.config = ["--config", config] if config else []
        self.env = {**os.environ, "LAZYLAYER_CONFIG": config or ""}
        self.log = work / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LAZYLAYER, *args, *self.config, "--run-dir", str(self.run_dir)],
                              capture_output=True, text=True, env=self.env)

    def __enter__(self) -> "Daemon":
        command = [*LAZYLAYER, "daemon", *self.config, "--workers", "2", "--mountpoint", str(self.work / "store"),
                   "--cache-dir", str(self.work / "cache"), "--run-dir", str(self.run_dir)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            preexec_fn=die_with_parent())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MountError(f"the daemon exited with {self.process.returncode}; see {self.log}")
            try:
                if len(call(str(self.run_dir), "status", timeout=2.0)["workers"]["workers"]) >= 2:
                    return self
            except LazyLayerError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise MountError(f"the daemon did not become ready in 60 s; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            stop_process(self.process)


def use_image(args: argparse.Namespace, daemon: Daemon, ref: str, target: Path) -> Summary:
    say(args, f"lazylayer mount {ref} {target}")
    started = time.monotonic()
    done = daemon.cli("mount", ref, str(target))
    if done.returncode != 0:
        raise MountError(done.stderr.strip() or f"lazylayer mount failed ({done.returncode})")
    mount_seconds = time.monotonic() - started
    try:
        first = target / "usr/lib/python3.11/os.py"
        started = time.monotonic()
        head = first.read_bytes()[:200] if first.exists() else b""
        first_read = time.monotonic() - started
        files = sum(len(names) for _, _, names in os.walk(target))
        say(args, f"{files} files; first line of usr/lib/python3.11/os.py: {head.splitlines()[:1]}")
        started = time.monotonic()
        python = subprocess.run(["/usr/bin/python3.11", "-S", "-s", "-c", PROGRAM], capture_output=True, text=True,
                                env={"PYTHONHOME": str(target / "usr")})
        python_seconds = time.monotonic() - started
        if python.returncode != 0:
            raise MountError(f"python3 on the mounted stdlib failed: {python.stderr.strip()[-500:]}")
        say(args, f"python3 on the image's stdlib: {python.stdout.strip()}")
        status = json.loads(daemon.cli("status", "--json").stdout)
        if not args.json:
            print(daemon.cli("status").stdout, file=sys.stderr)
    finally:
        daemon.cli("umount", str(target))
    layers = [l for l in status["layers"] if l["ref"] == ref]
    return Summary(ref, len(layers), sum(l["info"]["size"] for l in layers), files, mount_seconds, first_read,
                   python_seconds, json.loads(python.stdout)["stdlib"], sum(l["info"]["fetched_size"] for l in layers))
