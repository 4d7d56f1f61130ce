"""Fixtures for the local-user security tests: a runnable image with a setuid-root binary, a
world-usable device node and a private file, a daemon whose work dir other users can traverse,
and `as_nobody` to act as an unprivileged local user (runuser)."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.support.layers import Item, binary_items, build_layer, chardev, directory, file
from tests.support.registry import Layer, RunningRegistry, push_image, registry  # noqa: F401

SECRET = b"the content of a 0600 file of the image\n" * 64
#: a setuid-root copy of id(1): it prints "euid=0" only when the kernel honours the setuid bit
SUID_ID = "usr/local/bin/suid-id"


def runnable_items() -> list[Item]:
    """A minimal runnable root: id(1) with its libraries, a setuid-root copy, /dev/zero as a
    0666 node, a 0600 secret, and what podman expects to find."""
    dirs = ["etc/", "usr/", "usr/bin/", "usr/local/", "usr/local/bin/", "lib/", "lib64/", "lib/x86_64-linux-gnu/",
            "dev/", "tmp/", "proc/", "sys/", "run/", "root/"]
    return [
        *[directory(d) for d in dirs],
        *binary_items("/usr/bin/id"),
        file("usr/bin/id", Path("/usr/bin/id").read_bytes(), 0o755),
        file(SUID_ID, Path("/usr/bin/id").read_bytes(), 0o4755),
        chardev("dev/zero-node", 1, 5, mode=0o666),
        file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"),
        file("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
        file("etc/secret", SECRET, 0o600),
    ]


@pytest.fixture(scope="module")
def suid_image(registry: RunningRegistry) -> str:
    built = build_layer(runnable_items())
    push_image(registry, "security/suid", "v1",
               [Layer(built.blob, annotations=dict(built.result.annotations()), diff_id=built.result.diff_id)])
    return f"{registry.host}/security/suid:v1"


def public_workdir() -> Path:
    """A work dir every local user can traverse (pytest's tmp dirs are root-only, which would
    make every "nobody cannot" check pass for the wrong reason)."""
    path = Path(tempfile.mkdtemp(prefix="ll-sec-", dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = public_workdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(workdir: Path) -> Iterator[RunningDaemon]:
    running = start_daemon(workdir / "d", workers=1)
    try:
        yield running
    finally:
        running.stop()


def as_nobody(*command: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``command`` as user nobody (what any local user can do)."""
    return subprocess.run(["runuser", "-u", "nobody", "--", *command], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})


def lazylayer_as_user() -> list[str]:
    """The lazylayer CLI as another user can run it: this venv's interpreter may live under
    root's home, so Debian's python3 (same 3.11 ABI) with the venv's site-packages instead."""
    site = sysconfig.get_paths()["purelib"]
    boot = (f"import runpy, site, sys; site.addsitedir({site!r}); sys.argv[0] = 'lazylayer'; "
            "runpy.run_module('lazylayer.daemon.cli.main', run_name='__main__')")
    return ["/usr/bin/python3", "-c", boot]
