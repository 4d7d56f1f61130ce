"""A clean stop of the daemon (SIGTERM) leaves nothing behind in its run dir - no pid file, no
sockets, no upper/work dirs of `lazylayer mount --writable` - while a killed one can be restarted
on the same run dir (tests/fuse covers that)."""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

from lazylayer.daemon import mounts
from tests.fuse.daemonproc import start_daemon
from tests.support.fetchstack import PushedImage


def test_clean_stop_leaves_an_empty_run_dir(ops_image: PushedImage, tmp_path: Path):
    run_dir = Path(tempfile.mkdtemp(prefix="ll-stop-", dir="/tmp"))  # ipc paths must be short
    daemon = start_daemon(tmp_path, workers=1, run_dir=run_dir)
    try:
        target = tmp_path / "rw"
        done = daemon.cli("mount", "--writable", ops_image.ref, str(target))
        assert done.returncode == 0, done.stderr
        (target / "scratch").write_bytes(b"changed")
        assert {p.name for p in run_dir.iterdir()} == {"daemon.pid", "control.sock", "workers.sock", "overlay",
                                                       "connection"}
        assert any((run_dir / "overlay").rglob("scratch"))
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=60) == 0
        assert mounts.mount_at(target) is None
        assert sorted(p.name for p in run_dir.iterdir()) == [], daemon.log()
    finally:
        daemon.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
