"""Mount-table chores: finding mounts, cleaning a stale FUSE mount, bind and overlay mounts,
unmounting, and the FUSE bdi read-ahead.

Why mount(8)/umount(8) and not mount(2) through ctypes: their error messages are what an
operator expects to read, and option strings (overlayfs' escaped ``lowerdir``) pass unchanged.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lazylayer.shared.errors import MountError

log = logging.getLogger(__name__)

FUSE_TYPE = "fuse.lazylayer"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    #: "major:minor" of the superblock (the bdi name of a FUSE mount)
    device: str
    fstype: str
    source: str
    options: str  # per-superblock options (overlay's lowerdir/upperdir are here)


def _unescape(field: str) -> str:
    """mountinfo octal escapes (\\040 for a space, ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields, tail = left.split(" "), right.split(" ")
            entries.append(MountEntry(_unescape(fields[4]), fields[2], tail[0], _unescape(tail[1]),
                                      tail[2] if len(tail) > 2 else ""))
    return entries


def mount_at(path: str | os.PathLike[str], *, resolve: bool = True) -> MountEntry | None:
    """The topmost mount whose mountpoint is exactly ``path`` (symlinks resolved unless
    ``resolve`` is False: resolving stats the path, which the daemon must never do on its own
    mount from its own loop)."""
    target = os.path.realpath(path) if resolve else os.path.abspath(path)
    found = None
    for entry in mounts():
        if entry.mountpoint == target:
            found = entry
    return found


def require_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse) or give the "
                         "container --device /dev/fuse")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        raise MountError(f"/dev/fuse cannot be opened: {exc.strerror}") from None


def prepare_mountpoint(path: str) -> None:
    """Make ``path`` usable for our FUSE mount: create it, unmount a stale mount of ours left by
    a crashed daemon (its connection is gone: ENOTCONN), refuse anything else mounted there."""
    entry = mount_at(path)
    if entry is not None:
        if entry.fstype != FUSE_TYPE:
            raise MountError(f"mountpoint {path} is busy: {entry.fstype} from {entry.source} is mounted there")
        try:
            os.statvfs(path)  # never answered from the kernel's attribute cache, unlike stat
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise MountError(f"mountpoint {path}: {exc.strerror}") from None
            log.warning("cleaning a stale lazylayer mount at %s (its daemon died)", path)
            unmount(path, lazy=True)
        else:
            raise MountError(f"mountpoint {path} is busy: a running lazylayer daemon serves it")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")


def set_read_ahead(path: str, kb: int) -> bool:
    """Raise the FUSE mount's bdi read-ahead so the kernel sends 1 MiB reads (limits §2.2; reset
    on every mount). Needs root; False if it could not be set. The device number comes from
    mountinfo: stat() on our own mount before the FUSE loop runs would wait for ourselves."""
    entry = mount_at(path, resolve=False)
    if entry is None:
        log.warning("cannot set read-ahead: %s is not mounted", path)
        return False
    knob = Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb")
    try:
        knob.write_text(str(kb))
    except OSError as exc:
        log.warning("cannot set %s to %d: %s (sequential reads stay at 128 KiB requests)", knob, kb, exc.strerror)
        return False
    return True


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise MountError(f"{what}: {message[-1] if message else f'exit status {done.returncode}'}")


def unmount(path: str, *, lazy: bool = False) -> None:
    _run(["umount", *(["-l"] if lazy else []), path], f"cannot unmount {path}")


def bind_mount(source: str, target: str, *, readonly: bool = True) -> None:
    _run(["mount", "--bind", source, target], f"cannot bind {source} at {target}")
    if readonly:
        try:
            _run(["mount", "-o", "remount,bind,ro", target], f"cannot make {target} read-only")
        except MountError:
            unmount(target, lazy=True)
            raise


def escape_lowerdir(path: str) -> str:
    """overlayfs splits lowerdir on ':' (and layer digests contain one) and unescapes '\\':
    escape both."""
    return path.replace("\\", "\\\\").replace(":", "\\:")


def overlay_mount(lowers_top_first: list[str], upper: str, work: str, target: str) -> None:
    options = (f"lowerdir={':'.join(escape_lowerdir(p) for p in lowers_top_first)},"
               f"upperdir={upper},workdir={work}")
    _run(["mount", "-t", "overlay", "overlay", "-o", options, target], f"cannot mount overlay at {target}")
