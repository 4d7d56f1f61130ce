"""`lazylayer mount` refusing bad input against a real daemon: a plain gzip image says what to do
(convert it) and names the same layer every time; a DIR that cannot be a mountpoint gives one
line, no traceback; a failed mount leaves none of the directories it created."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.fuse.daemonproc import RunningDaemon, start_daemon
from tests.support.layers import directory, file, make_tar
from tests.support.registry import Layer, RunningRegistry, digest_of, push_image

#: enough layers that the one a worker refuses first is rarely the first in manifest order
PLAIN_LAYERS = 6


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path_factory.mktemp("daemon"), workers=2)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def plain_image(registry: RunningRegistry) -> tuple[str, list[str]]:
    """An ordinary gzip image (what `docker build` pushes): no TOC, no TOC digest annotation."""
    blobs = [gzip.compress(make_tar([directory(f"d{i}/"), file(f"d{i}/f", bytes([i]) * (1000 + i))]))
             for i in range(PLAIN_LAYERS)]
    push_image(registry, "ops/plain", "v1", [Layer(blob) for blob in blobs])
    return f"{registry.host}/ops/plain:v1", [digest_of(blob) for blob in blobs]


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("lazylayer mount: ")
    return done.stderr.strip()


def test_plain_gzip_image_says_convert_it_and_names_the_first_layer(daemon: RunningDaemon, plain_image, tmp_path):
    ref, digests = plain_image
    target = tmp_path / "new" / "view"
    messages = set()
    for mode in ([], [], ["--writable"], []):
        message = one_line_error(daemon.cli("mount", *mode, ref, str(target)))
        assert "not eStargz/zstd:chunked: convert it with `lazylayer convert`" in message
        assert "allow_unverified" not in message and "require_toc_digest" not in message
        messages.add(message)
        assert not (tmp_path / "new").exists()  # the mount made new/ and new/view: both gone again
    assert len(messages) == 1 and digests[0] in messages.pop()


def test_bad_mount_dirs_are_one_line_and_leave_nothing(daemon: RunningDaemon, registry: RunningRegistry,
                                                        tmp_path: Path):
    ref = f"{registry.host}/ops/app:v1"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "a-file is not a directory" in one_line_error(daemon.cli("mount", ref, str(a_file)))
    assert "a-file is not a directory" in one_line_error(daemon.cli("mount", "--writable", ref, str(a_file / "sub")))
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], check=True)
    try:
        message = one_line_error(daemon.cli("mount", ref, str(read_only / "x" / "y")))
        assert f"cannot create {read_only / 'x'}: Read-only file system" in message
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "ro"]
    assert a_file.read_text() == "x"
