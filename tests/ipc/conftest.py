"""Fixtures for the IPC tests: a short private run directory, external workers, PYTHONPATH."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.ipc.harness import REPO, Notifier, Workers


@pytest.fixture
def run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # ipc:// paths are limited to ~107 bytes: pytest's tmp_path is often too long.
    path = Path(tempfile.mkdtemp(prefix="ll-ipc-", dir="/tmp"))
    # Workers are fresh interpreters running `-m tests.support.ipc_worker`.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def endpoint(run_dir: Path) -> str:
    return f"ipc://{run_dir}/workers.sock"


@pytest.fixture
def workers(endpoint: str) -> Iterator[Workers]:
    group = Workers(endpoint)
    yield group
    group.stop_all()


@pytest.fixture
def notifier(run_dir: Path) -> Iterator[Notifier]:
    note = Notifier(run_dir / "notify.sock")
    yield note
    note.close()
