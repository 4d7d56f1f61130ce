"""The start-up read-ahead (daemon/startfiles.py): its list names what the front and the workers'
forker really import, and reading it ahead puts those files in the page cache without ever
blocking on or following something that is not a regular file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lazylayer.daemon import startfiles

REPO = Path(__file__).resolve().parents[2]


def resident_bytes(path: Path) -> int:
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_the_list_holds_what_front_and_forker_import_once_each_in_import_order(tmp_path: Path) -> None:
    path = tmp_path / "start-files"
    count = startfiles.write_list(path)
    names = path.read_text().splitlines()
    assert len(names) == count == len(set(names))
    assert all(os.path.isfile(name) for name in names)
    wanted = {"front": REPO / "daemon" / "__pycache__" / "service.cpython-311.pyc",
              "worker": REPO / "workers" / "registry" / "__pycache__" / "client.cpython-311.pyc"}
    for what, pyc in wanted.items():
        assert str(pyc) in names, what
    assert any("/trio/__pycache__/__init__." in name for name in names)  # the front's third-party stack
    assert any("/requests/__pycache__/__init__." in name for name in names)  # the workers'
    assert any(os.path.basename(name).startswith("libzmq") for name in names)  # a library from /proc/self/maps
    # import order: a package's bytecode before its modules'
    assert names.index(str(wanted["front"])) > names.index(str(REPO / "daemon" / "__pycache__" /
                                                               "__init__.cpython-311.pyc"))


def test_read_ahead_fills_the_page_cache_and_skips_what_is_not_a_regular_file(tmp_path: Path) -> None:
    data = tmp_path / "module.pyc"
    with open(data, "wb") as f:
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert resident_bytes(data) == 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # an open without O_NONBLOCK would wait for a writer forever
    names = [str(tmp_path / "gone.pyc"), str(fifo), str(tmp_path), "/dev/zero", str(data), ""]
    assert startfiles.read_ahead(names) == 1
    deadline = time.monotonic() + 10
    while resident_bytes(data) < 4 << 20:  # WILLNEED starts the reads; they finish on their own
        assert time.monotonic() < deadline, "the file was not read into the page cache"
        time.sleep(0.05)


def test_no_list_no_thread_and_a_list_is_read_on_a_thread(tmp_path: Path) -> None:
    assert startfiles.start(tmp_path / "missing") is None
    listed = tmp_path / "start-files"
    listed.write_text(f"{tmp_path / 'gone.pyc'}\n")
    thread = startfiles.start(listed)
    assert thread is not None and thread.daemon
    thread.join(10)
    assert not thread.is_alive()


def test_setup_wrote_the_list_of_this_install() -> None:
    """scripts/setup (which ran before this suite) leaves the list where `lazylayer daemon` reads it."""
    names = startfiles.list_path().read_text().splitlines()
    assert str(REPO / "daemon" / "__pycache__" / "service.cpython-311.pyc") in names
