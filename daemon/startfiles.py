"""Read-ahead of the files a daemon start imports, so a cold start waits less on the disk.

Why: `lazylayer daemon` on a cold page cache (a host that just booted, the benchmark's
drop_caches) imports ~380 modules in the front and ~500 files' worth in the workers' forker, one
small synchronous read after another: measured here, 360 ms to the mount cold against 170 ms
warm. One thread that asks the kernel for all of those files at once (POSIX_FADV_WILLNEED starts
the reads and returns) keeps the disk busy ahead of the importers: 360 -> ~290 ms.

The list is made where the install is, not at run time: `python -m lazylayer.daemon.startfiles`
(scripts/setup runs it after compiling the bytecode) imports what the front and the forker
import, each in a fresh interpreter, and writes the files they loaded, in import order, the two
lists interleaved as the two processes run side by side, to ``<sys.prefix>/share/lazylayer/
start-files``. Without that file nothing is read ahead. A stale list costs only time: a missing
entry is skipped, a module missing from it is read when imported, as without the list.
"""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

#: what `lazylayer daemon` imports before it mounts (daemon/cli/daemon.py), and what its forker imports
FRONT_MODULES = ("lazylayer.daemon.cli.daemon", "lazylayer.daemon.startup", "lazylayer.daemon.holder",
                 "lazylayer.shared.plugins", "lazylayer.daemon.service")
WORKER_MODULES = ("lazylayer.workers.prefork",)

#: an entry larger than this is not read ahead (a list edited by hand must not fill the page cache)
MAX_FILE_SIZE = 64 << 20

_LOADED = """\
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
seen = set()
for module in list(sys.modules.values()):
    spec = getattr(module, "__spec__", None)
    for path in (getattr(spec, "cached", None), getattr(spec, "origin", None)):
        if path and path.endswith((".pyc", ".so")) and path not in seen:
            seen.add(path)
            print(path)
with open("/proc/self/maps") as maps:
    for line in maps:
        fields = line.split(None, 5)
        path = fields[5].strip() if len(fields) == 6 else ""
        if ".so" in path and path.startswith("/") and path not in seen:
            seen.add(path)
            print(path)
"""


def list_path(prefix: str = sys.prefix) -> Path:
    return Path(prefix) / "share" / "lazylayer" / "start-files"


def loaded_files(modules: tuple[str, ...]) -> list[str]:
    """The bytecode and shared libraries a fresh interpreter loads importing ``modules``."""
    done = subprocess.run([sys.executable, "-c", _LOADED, *modules], capture_output=True, text=True, check=True)
    return done.stdout.split("\n")[:-1]


def write_list(path: Path) -> int:
    """Write the start-up list (front and forker files interleaved, each once); returns its length."""
    front, workers = loaded_files(FRONT_MODULES), loaded_files(WORKER_MODULES)
    merged = dict.fromkeys(f for pair in itertools.zip_longest(front, workers) for f in pair if f)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(f"{name}\n" for name in merged))
    partial.replace(path)
    return len(merged)


def read_ahead(names: list[str]) -> int:
    """Ask the kernel to read every regular file of ``names`` into the page cache; returns how
    many were asked for. Never blocks on a FIFO or follows a name to a device: O_NONBLOCK, and
    only regular files are advised."""
    asked = 0
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_FILE_SIZE:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                asked += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return asked


def start(path: Path | None = None) -> threading.Thread | None:
    """Read the installed list ahead on a daemon thread (None: there is no list)."""
    try:
        names = (path or list_path()).read_text().split("\n")
    except OSError:
        return None
    thread = threading.Thread(target=read_ahead, args=(names,), name="start-files", daemon=True)
    thread.start()
    return thread


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else list_path()
    print(f"{path}: {write_list(path)} files read ahead at daemon start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
