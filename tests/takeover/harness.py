"""Readers that check every byte while fronts come and go, and a real `lazylayer holder`.

Each reader loops over its files, reading a slice at a random offset and comparing it with the
source tree; every read is logged with its start and end time, so a test can tell a read that was
in flight at a kill (allowed to fail with EIO) from one that was not (must succeed)."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazylayer.daemon.holder import socket_path
from lazylayer.shared.procs import die_with_parent, stop_process
from tests.fuse.daemonproc import LAZYLAYER


@dataclass
class Read:
    start: float
    end: float
    path: str
    error: int | None  # errno, or None
    wrong: bool = False
    detail: str = ""


@dataclass
class Readers:
    files: list[tuple[Path, bytes]]  # (path to read, expected bytes)
    count: int = 16
    reads: list[Read] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            path, data = self.files[rng.randrange(len(self.files))]
            off = rng.randrange(max(len(data), 1))
            size = rng.choice((1, 4096, 100_000))
            start = time.monotonic()
            try:
                with open(path, "rb", buffering=0) as f:
                    f.seek(off)
                    got = f.read(size)
                want = data[off:off + size]
                detail = "" if got == want else f"off {off} size {size}: got {len(got)} bytes, want {len(want)}" + (
                    f", first difference at {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)}"
                    if got != want[:len(got)] else " (short read)")
                self.reads.append(Read(start, time.monotonic(), str(path), None, got != want, detail))
            except OSError as exc:
                self.reads.append(Read(start, time.monotonic(), str(path), exc.errno))
                time.sleep(0.01)

    def start(self) -> None:
        for i in range(self.count):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop; the names of readers still stuck in a read (a hang) after ``timeout``."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]

    def check(self, kills: list[float]) -> None:
        """No wrong bytes; a failed read must be EIO and in flight at one of ``kills``."""
        assert self.reads, "no reads at all"
        wrong = [r for r in self.reads if r.wrong]
        assert not wrong, f"{len(wrong)} reads returned wrong bytes, first: {wrong[0]}"
        failed = [r for r in self.reads if r.error is not None]
        bad = [r for r in failed if r.error != errno.EIO or not any(r.start <= k <= r.end for k in kills)]
        assert not bad, (f"{len(bad)} of {len(self.reads)} reads failed outside a kill, first: "
                         f"{bad[0]} ({os.strerror(bad[0].error or 0)})")


def files_of(root: Path, expected: dict[str, bytes]) -> list[tuple[Path, bytes]]:
    return [(root / rel, data) for rel, data in expected.items() if data]


class Holder:
    """`lazylayer holder` on a config's run dir."""

    def __init__(self, config_path: Path, run_dir: Path, log_path: Path) -> None:
        self.run_dir = run_dir
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen([*LAZYLAYER, "holder", "--config", str(config_path)], stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent(),
                                            env={**os.environ, "LAZYLAYER_CONFIG": ""})
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path(str(run_dir))):
            assert self.process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
