"""The Python app of the peer comparison: a script, what its start touches, and how it runs.

The app image has three layers: the rootfs layer of the benchmark image (a Debian base), the
python layer (site-packages with the recipe's pip packages) and a small app layer holding
APP_DIR/main.py. What the app's start touches is recorded once, at build time, by running the
same script on this machine under `strace -f -e trace=%file` (the interpreter is this machine's
/usr/bin/python3.11, the one the image carries): the files it stats or opens go into the rootfs
layer (so the chroot has all it needs), and the regular files it opens, in order, become the
prefetch list of the `...-prefetch` tag (`lazylayer convert --prefetch-list`), as upstream's
`--estargz-record-in` does with a recorded run.

The app runs as ``chroot MERGED /usr/bin/python3.11 /app/main.py`` on a kernel overlayfs whose
lower dirs are the three layers' ``diff`` dirs in a layer store (lazylayer's or the Go peer's).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

PYTHON = "/usr/bin/python3.11"
APP_DIR = "app"
SCRIPTS = {
    # the full image: what a data app imports first
    "full": ('import numpy, pandas, rich\nfrom rich.console import Console\n'
             'frame = pandas.DataFrame({"x": numpy.arange(10)})\n'
             'Console(width=80).print(f"numpy {numpy.__version__}, pandas {pandas.__version__}: '
             'sum {int(frame.x.sum())}")\n'),
    # --quick: the standard library only (no PyPI needed)
    "quick": 'import json, email.message\nprint(json.dumps({"sum": sum(range(10))}))\n',
}
#: host paths never copied into an image (per-process, per-boot or scratch)
SKIP_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/", "/tmp/", "/var/tmp/")
_CALL = re.compile(r'^\d+\s+(?:<\.\.\. )?(\w+)\((?:AT_FDCWD, |\d+, )?"((?:[^"\\]|\\.)+)"')
_OPENS = {"open", "openat", "openat2", "execve"}


def app_env(site_packages: str) -> dict[str, str]:
    """The app's whole environment, the same on the host (recording) and in the chroot."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
            "PYTHONPATH": site_packages, "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class Trace:
    #: every existing host path the start stat'ed, opened or executed, first touch first
    touched: tuple[str, ...]
    #: the regular files it opened, resolved, first open first
    opened: tuple[str, ...]
    #: what the app printed (the chroot run must print the same)
    output: str


def write_app(directory: Path, recipe: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "main.py"
    script.write_text(SCRIPTS[recipe])
    return script


def record(script: Path, site_packages: Path) -> Trace:
    """Run the app on this machine under strace; see the module doc."""
    with tempfile.NamedTemporaryFile(prefix="bench-strace-", suffix=".txt") as out:
        done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", out.name, PYTHON, str(script)],
                              env=app_env(str(site_packages)), cwd="/", capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"recording the app's start (strace {PYTHON} {script}) failed: "
                             f"{done.stderr.strip()[-600:]}")
        lines = Path(out.name).read_text(errors="replace").splitlines()
    # the site-packages and the script may sit under a skipped prefix (/var/tmp): theirs are the
    # app's files (the python and app layers), not scratch, and must not be skipped
    roots = (str(site_packages), str(script.parent))
    touched: dict[str, None] = {elf_interpreter(PYTHON): None}  # the kernel opens it: strace shows no call
    opened: dict[str, None] = {}
    for line in lines:
        match = _CALL.match(line)
        if not match or not match.group(2).startswith("/"):
            continue
        call, path = match.groups()
        ours = any(path == root or path.startswith(root + "/") for root in roots)
        if path.startswith(SKIP_PREFIXES) and not ours or not os.path.lexists(path):
            continue
        touched.setdefault(path, None)
        if call in _OPENS and os.path.isfile(path):
            opened.setdefault(os.path.realpath(path), None)
    return Trace(tuple(touched), tuple(opened), done.stdout)


def elf_interpreter(path: str) -> str:
    """The PT_INTERP path of an ELF64 executable (the dynamic loader exec needs in the chroot)."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if data[:5] != b"\x7fELF\x02":
        raise BenchError(f"{path} is not an ELF64 executable")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        kind, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if kind == 3:  # PT_INTERP
            offset, = struct.unpack_from("<Q", data, phoff + i * phentsize + 8)
            size, = struct.unpack_from("<Q", data, phoff + i * phentsize + 32)
            return data[offset:offset + size].rstrip(b"\0").decode()
    raise BenchError(f"{path} has no program interpreter (static?)")


def link_chain(path: str) -> list[str]:
    """``path`` with its directories resolved, then every symlink it leads through, each the
    same way: what an image needs so that ``path`` opens in a chroot (the root's usr-merge
    links are the image's own)."""
    out: list[str] = []
    current = path
    while len(out) < 40:
        current = os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
        if current in out:
            break
        out.append(current)
        if not os.path.islink(current):
            break
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    return out


def image_name(host: str, site_packages: Path, app_dir: Path, site_name: str) -> str | None:
    """Where a host file of the recording sits in the image, or None when it is no image file
    (python and app layer files map to their layers; everything else is the rootfs's)."""
    for root, name in ((str(site_packages), site_name), (str(app_dir), APP_DIR)):
        if host == root or host.startswith(root + "/"):
            return name + host[len(root):]
    return None if host.startswith(SKIP_PREFIXES) else host.lstrip("/")


def rootfs_files(trace: Trace, site_packages: Path, app_dir: Path) -> list[str]:
    """Host paths the rootfs layer must hold for the app to start in a chroot."""
    out: dict[str, None] = {}
    for path in trace.touched:
        for host in link_chain(path):
            inside = any(host == str(d) or host.startswith(f"{d}/") for d in (site_packages, app_dir))
            if host != "/" and not inside and not host.startswith(SKIP_PREFIXES) and os.path.lexists(host):
                out.setdefault(host, None)
    return list(out)


def run_app(merged: Path, site_name: str) -> str:
    """``chroot MERGED /usr/bin/python3.11 /app/main.py``; its output."""
    def enter() -> None:
        os.chroot(merged)
        os.chdir("/")

    try:
        done = subprocess.run([PYTHON, f"/{APP_DIR}/main.py"], env=app_env(f"/{site_name}"), preexec_fn=enter,
                              capture_output=True, text=True, timeout=600)
    except OSError as exc:
        raise BenchError(f"cannot start {PYTHON} in the chroot {merged}: {exc}") from None
    if done.returncode != 0:
        raise BenchError(f"the app failed in the chroot on {merged}: {done.stderr.strip()[-800:]}")
    return done.stdout
