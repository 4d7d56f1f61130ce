"""Item 12: a fleet behind a cold pull-through cache (issue 18; README "Running a fleet").

The origin is the run's registry; a docker-registry in proxy mode (`proxy: remoteurl:`) is the
cluster's cache, fresh (cold) each run, and a counting forwarder (tests/support/faultproxy.py,
the same one the fleet test uses) sits in front of the origin, so every byte the origin sends -
to the cache and to the hosts reading beside it - is counted. Three daemons with separate caches
use the cache as their mirror. Host 1 reads a small file (its **first byte** is timed: layer
resolve included, the daemon already serving; hosts 2 and 3 start after it, as other machines'
start-up would not share host 1's cores) and then the layer's largest file; then hosts 2 and
3 read both at once. The origin and the cache run at the lowest CPU priority meanwhile: on a
fleet they are other machines, and here, beside host 1 on two cores, the cache filling the
image's three blobs took 1.3-1.6 core-seconds from it (first byte 1.7-2.6 s by hand, against
1.0-1.3 s with them niced; they still get every idle cycle). Every file read is compared with
the same file on this machine (the image is built from this machine's files). Figures (extras):
origin bytes / blob size for the whole cluster (the layer read, and all blobs: resolving one
layer resolves the image's others too, which the cache then fills as well), host 1's first
byte, the same first byte on a fresh daemon reading the origin directly (no mirror: the
baseline, taken first), and each host's big-file time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from bench.errors import BenchError
from bench.images import BenchImage
from bench.lazy import LazyDaemon, start_daemon
from lazylayer.daemon.layout import encode_ref
from lazylayer.workers.registry.local import start_local_registry
from tests.support.faultproxy import FaultProxy

HOSTS = 3


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def _largest_file(root: Path) -> Path:
    """The largest regular file of a resolved layer dir (metadata only: nothing is fetched)."""
    best, size = None, -1
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            st = path.lstat()
            if path.is_file() and not path.is_symlink() and st.st_size > size:
                best, size = path, st.st_size
    if best is None:
        raise BenchError(f"no regular file under {root}")
    return best


def _check(digest: str, path: Path, layer_dir: Path) -> None:
    here = Path("/") / path.relative_to(layer_dir)
    if here.is_file() and _digest(here) != digest:
        raise BenchError(f"{path}: its contents differ from {here}, which the image was built from")


def _renice(priorities: dict[int, int]) -> None:
    """Every thread of each process ``pid`` to ``priorities[pid]``."""
    for pid, value in priorities.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone: nothing to share the cores with
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), value)
            except OSError:
                pass  # the thread ended meanwhile


@contextmanager
def _elsewhere(*pids: int) -> Iterator[None]:
    """Processes standing in for other machines get only the CPU this machine's own do not use
    (every thread niced to 19; threads they start meanwhile inherit it), until the block ends:
    then every thread they have goes back to the priority the process had."""
    before: dict[int, int] = {}
    for pid in pids:
        try:
            before[pid] = os.getpriority(os.PRIO_PROCESS, pid)
        except OSError:
            pass  # gone already
    _renice({pid: 19 for pid in before})
    try:
        yield
    finally:
        _renice(before)


def _first_byte(layer_dir: Path, path: str) -> float:
    started = time.monotonic()
    with open(layer_dir / path, "rb") as f:
        if not f.read(4096):
            raise BenchError(f"{path} read empty")
    return time.monotonic() - started


def measure_fleet(image: BenchImage, workdir: Path, config: Path, workers: int,
                  record: Callable[[str, float], None], drop_caches: Callable[[], None], origin_pid: int) -> None:
    """One run of item 12 against the origin registry running as ``origin_pid``; figures go to
    ``record(name, value)``."""
    layer = max(image.esgz_layers, key=lambda l: l.size)
    small = image.first_files[0]
    area = workdir / "fleet"
    shutil.rmtree(area, ignore_errors=True)
    direct = start_daemon(area / "direct", area / "direct" / "cache", workers, config)
    try:
        drop_caches()
        with _elsewhere(origin_pid):
            record("fleet_first_byte_direct_s", _first_byte(direct.mountpoint / encode_ref(image.esgz_ref)
                                                            / layer.digest / "diff", small))
    finally:
        direct.stop()
    drop_caches()
    forwarder = FaultProxy(image.registry_host)
    mirror = start_local_registry(area / "cache", extra_yaml=f"proxy:\n  remoteurl: {forwarder.url}\n")
    fleet_config = area / "lazylayer-fleet.toml"
    fleet_config.write_text(config.read_text() + f'\n[registry]\nmirrors = {{ "{forwarder.host}" = ["{mirror.url}"] }}\n')
    ref = f"{forwarder.host}/{image.esgz_ref.split('/', 1)[1]}"
    daemons: list[LazyDaemon] = []
    try:
        with _elsewhere(origin_pid, mirror.process.pid):
            # Hosts 2 and 3 start after host 1's first byte: on this one machine their start-up
            # (two fronts and four workers importing) would take host 1's cores, which on a fleet
            # are other machines'.
            daemons.append(start_daemon(area / "host0", area / "host0" / "cache", workers, fleet_config))
            first_dir = daemons[0].mountpoint / encode_ref(ref) / layer.digest / "diff"
            record("fleet_first_byte_s", _first_byte(first_dir, small))
            for i in range(1, HOSTS):
                daemons.append(start_daemon(area / f"host{i}", area / f"host{i}" / "cache", workers, fleet_config))
            dirs = [d.mountpoint / encode_ref(ref) / layer.digest / "diff" for d in daemons]
            big = _largest_file(dirs[0]).relative_to(dirs[0])
            failures: list[BaseException] = []

            def host(i: int) -> None:
                try:
                    _check(_digest(dirs[i] / small), dirs[i] / small, dirs[i])
                    t = time.monotonic()
                    digest = _digest(dirs[i] / big)
                    record(f"fleet_big_file_host{i + 1}_s", time.monotonic() - t)
                    _check(digest, dirs[i] / big, dirs[i])
                except BaseException as exc:  # noqa: BLE001 - raised below
                    failures.append(exc)

            host(0)
            threads = [threading.Thread(target=host, args=(i,)) for i in range(1, HOSTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failures:
                raise BenchError(f"fleet: {failures[0]}")
            sent = forwarder.body_bytes("GET", f"/blobs/{layer.digest}")
            record("fleet_origin_ratio", sent / layer.size)
            record("fleet_origin_ratio_all", forwarder.body_bytes("GET", "/blobs/") / sum(l.size for l in image.esgz_layers))
            record("fleet_blob_mb", layer.size / 1e6)
            record("fleet_big_file_mb", (dirs[0] / big).stat().st_size / 1e6)
    finally:
        for daemon in daemons:
            daemon.stop()
        mirror.stop()
        forwarder.stop()
        shutil.rmtree(area, ignore_errors=True)
