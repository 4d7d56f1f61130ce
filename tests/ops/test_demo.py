"""The README's main job (`lazylayer demo`, what scripts/demo runs) end to end on this machine:
embedded registry, image built and converted, real daemon and mount, the mounted stdlib used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lazylayer.daemon import mounts


def test_demo_runs_the_main_job(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "lazylayer.daemon.cli.main", "demo", "--json",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "LAZYLAYER_CONFIG": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["layers"] == 2 and summary["files"] > 1000
    assert summary["python_prefix"] == str(tmp_path / "image" / "usr")
    # the interpreter's imports were served lazily: something, but a small part of the image
    assert 0 < summary["fetched_bytes"] < summary["image_bytes"] / 5
    assert mounts.mount_at(tmp_path / "image") is None and mounts.mount_at(tmp_path / "store") is None
