"""The shipped config/supervisord.conf under a real supervisord (PyPI `supervisor`): the holder,
the front and two workers start, reads go through the mount, a SIGKILLed worker is restarted while
reads go on, stopping the group unmounts cleanly, and starting it again finds the cache warm.

Only paths change from the shipped file (binary, config, log dir), exactly what the README's
"Deploy with supervisord" section tells an operator to adapt."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from lazylayer.daemon import mounts
from lazylayer.daemon.control import call
from lazylayer.daemon.layout import encode_ref
from lazylayer.shared.procs import die_with_parent
from lazylayer.workers.registry.local import free_port
from tests.fuse.daemonproc import unmount_under
from tests.ops.test_daemon_ops import scrape, wait_for
from tests.support.fetchstack import PushedImage, write_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FRONT, WORKER, HOLDER = "lazylayer:lazylayer-front", "lazylayer:lazylayer-worker", "lazylayer:lazylayer-holder"

MAIN_CONF = """\
[unix_http_server]
file={run}/supervisor.sock

[supervisord]
logfile={work}/supervisord.log
pidfile={run}/supervisord.pid
childlogdir={work}/logs
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run}/supervisor.sock

[include]
files = {work}/conf.d/*.conf
"""


class Supervisor:
    def __init__(self, work: Path, run: Path) -> None:
        self.work, self.run = work, run
        self.conf = work / "supervisord.conf"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([str(BIN / "supervisord"), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, preexec_fn=die_with_parent())

    def ctl(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=120)
        return done.stdout + done.stderr

    def states(self) -> dict[str, str]:
        out = {}
        for line in self.ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("lazylayer:"):
                out[parts[0]] = parts[1]
        return out

    def pid(self, name: str) -> int:
        return int(self.ctl("pid", name).strip() or 0)

    def shutdown(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.ctl("shutdown")
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def deployment_files(work: Path, run: Path, port: int) -> Path:
    """The README's layout under ``work``: the shipped program file with its three paths
    adapted, our config, and an empty log dir."""
    (work / "logs").mkdir()
    (work / "conf.d").mkdir()
    config = write_config(work / "lazylayer.toml", {
        "daemon": {"mountpoint": str(work / "mnt"), "run_dir": str(run), "log_level": "INFO"},
        "cache": {"dir": str(work / "cache"), "map_size": 4 << 30, "max_size": 2 << 30},
        "workers": {"heartbeat_interval": 0.5, "request_timeout": 30.0},
        "metrics": {"address": f"127.0.0.1:{port}"},
        # only demand reads fetch: the warm-restart check counts misses exactly
        "prefetch": {"enabled": False},
        "background": {"enabled": False},
        "snapshotter": {"address": str(run / "snapshotter.sock"), "root": str(work / "snapshotter")},
    })
    shipped = (REPO / "config" / "supervisord.conf").read_text()
    adapted = (shipped.replace("/usr/local/bin/lazylayer", str(BIN / "lazylayer"))
               .replace("/etc/lazylayer/lazylayer.toml", str(config))
               .replace("/var/log/lazylayer", str(work / "logs")))
    commands = [line for line in adapted.splitlines() if line.startswith("command=")]
    assert len(commands) == 4 and all(c.startswith(f"command={BIN}/lazylayer ") and str(config) in c for c in commands)
    (work / "conf.d" / "lazylayer.conf").write_text(adapted)
    (work / "supervisord.conf").write_text(MAIN_CONF.format(work=work, run=run))
    return config


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    run = Path(tempfile.mkdtemp(prefix="ll-sv-", dir="/tmp"))  # ipc/unix socket paths must be short
    sv = Supervisor(tmp_path, run)
    try:
        yield sv
    finally:
        sv.shutdown()
        unmount_under(tmp_path / "mnt")
        shutil.rmtree(run, ignore_errors=True)


def test_supervisord_deployment(supervisor: Supervisor, ops_image: PushedImage):
    port = free_port()
    work, run = supervisor.work, supervisor.run
    deployment_files(work, run, port)
    supervisor.start()

    def workers_alive() -> int:
        status = call(str(run), "status", timeout=5.0)
        return sum(1 for w in status["workers"]["workers"] if w["capacity"] > 0)

    def ready() -> bool:
        states = supervisor.states()
        return len(states) == 5 and set(states.values()) == {"RUNNING"} and workers_alive() == 2

    wait_for("supervisord to start the holder, the front and 2 workers", ready)

    mnt = work / "mnt"
    tool, blob = ops_image.layers[0], ops_image.layers[1]

    def read(layer: Any, path: str) -> None:
        with open(mnt / encode_ref(ops_image.ref) / layer.digest / "diff" / path, "rb") as f:
            assert f.read() == (layer.root / path).read_bytes()

    read(tool, "usr/bin/tool")
    assert scrape(port)["lazylayer_workers_alive"] == 2

    # a worker SIGKILLed: supervisord restarts it, the front takes the new one, reads go on
    victim = f"{WORKER}-0"
    old_pid = supervisor.pid(victim)
    supervisor.ctl("signal", "KILL", victim)
    read(blob, "opt/data/blob.bin")
    wait_for("the worker's restart", lambda: supervisor.pid(victim) not in (0, old_pid)
             and supervisor.states().get(victim) == "RUNNING")
    wait_for("2 workers connected again", lambda: workers_alive() == 2)
    read(tool, "usr/lib/libx.so.1")

    # SIGHUP to the whole group (an operator's reload): nobody dies, everyone re-reads the file
    pids = {name: supervisor.pid(name) for name in supervisor.states()}
    supervisor.ctl("signal", "HUP", "lazylayer:*")
    wait_for("the reload lines", lambda: "reloaded" in (work / "logs" / "front.log").read_text()
             and "reloaded" in (work / "logs" / "lazylayer-worker-1.log").read_text()
             and "reloaded" in (work / "logs" / "snapshotter.log").read_text())
    assert {name: supervisor.pid(name) for name in supervisor.states()} == pids
    read(blob, "opt/data/blob.bin")

    # stop the group: the front hands over, the holder (stopped last) unmounts; clean stops
    assert "stopped" in supervisor.ctl("stop", "lazylayer:*")
    assert set(supervisor.states().values()) == {"STOPPED"}
    assert mounts.mount_at(mnt) is None
    assert "left" in (work / "logs" / "front.log").read_text()

    # start it again: a new mount, the workers reconnect and the LMDB cache is as warm as it was
    assert "started" in supervisor.ctl("start", "lazylayer:*")
    wait_for("2 workers connected to the new front", lambda: workers_alive() == 2)
    read(tool, "usr/bin/tool")
    read(blob, "opt/data/blob.bin")
    warm = scrape(port)
    assert warm["lazylayer_cache_misses_total"] == 0
    assert warm["lazylayer_cache_hits_total"] > 0
    assert sum(v for k, v in warm.items() if k.startswith("lazylayer_errors_total")) == 0
