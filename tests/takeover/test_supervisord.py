"""The shipped config/supervisord.conf: the front SIGKILLed 3 times (supervisord restarts it, the
new front takes the holder's connection over) and then upgraded with `supervisorctl restart`, while
16 readers read through the layer store and a `lazylayer mount` view."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from lazylayer.daemon.control import call
from lazylayer.daemon.layout import encode_ref
from lazylayer.workers.registry.local import free_port
from tests.fuse.daemonproc import LAZYLAYER, unmount_under
from tests.ops.test_daemon_ops import wait_for
from tests.ops.test_supervisord import FRONT, Supervisor, deployment_files
from tests.support.fetchstack import PushedImage, expected_files
from tests.takeover.harness import Readers, files_of


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    run = Path(tempfile.mkdtemp(prefix="ll-sv-", dir="/tmp"))
    sv = Supervisor(tmp_path, run)
    try:
        yield sv
    finally:
        sv.shutdown()
        unmount_under(tmp_path)
        shutil.rmtree(run, ignore_errors=True)


def test_front_kills_and_upgrade_under_supervisord(supervisor: Supervisor, app_image: PushedImage, tmp_path: Path):
    work, run = supervisor.work, supervisor.run
    config = deployment_files(work, run, free_port())
    supervisor.start()

    def status() -> dict:
        return call(str(run), "status", timeout=5.0)

    wait_for("the holder, the front and 2 workers", lambda: set(supervisor.states().values()) == {"RUNNING"}
             and sum(1 for w in status()["workers"]["workers"] if w["capacity"] > 0) == 2)
    view = tmp_path / "view"
    done = subprocess.run([*LAZYLAYER, "mount", app_image.ref, str(view), "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    files, merged = [], {}
    for layer in app_image.layers:
        expected = expected_files(layer.root)
        files += files_of(work / "mnt" / encode_ref(app_image.ref) / layer.digest / "diff", expected)
        merged.update(expected)
    readers = Readers(files + files_of(view, merged))
    readers.start()
    kills = []
    try:
        for round in range(1, 4):
            time.sleep(1.0)
            old = supervisor.pid(FRONT)
            kills.append(time.monotonic())
            supervisor.ctl("signal", "KILL", FRONT)
            wait_for(f"takeover {round}", lambda: supervisor.pid(FRONT) not in (0, old)
                     and status()["takeovers"] == round)
        time.sleep(1.0)
        upgrade_from = len(readers.reads)
        assert "started" in supervisor.ctl("restart", FRONT)  # the README's upgrade
        wait_for("takeover 4", lambda: status()["takeovers"] == 4)
        time.sleep(1.0)
    finally:
        stuck = readers.stop()
    assert not stuck, f"readers hung: {stuck}"
    readers.check(kills)
    assert all(r.error is None for r in readers.reads[upgrade_from:])
    assert [m["target"] for m in status()["mounts"]] == [str(view)]
