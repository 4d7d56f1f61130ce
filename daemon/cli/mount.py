"""`lazylayer mount REF DIR [--writable]`: the whole image at DIR, lazily pulled.

Read-only (default): the daemon resolves the image, this command writes the merged view (layers
stacked, whiteouts and opaque dirs applied; shared/store/merged.py) into the cache, the daemon
serves it at MNT/.images/<view id>, and that directory is bind-mounted read-only at DIR. No
overlayfs is involved.

``--writable``: kernel overlayfs with the layers' ``diff`` directories as lowerdirs and an
upper/work dir under RUN_DIR/overlay/ (changes are discarded by `lazylayer umount`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
from typing import Callable

from lazylayer.daemon import mounts
from lazylayer.daemon.cli._image import daemon_ref
from lazylayer.daemon.control import add_client_arguments, call, client_run_dir
from lazylayer.shared.config import load_config
from lazylayer.shared.errors import LazyLayerError, MountError
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.merged import MergedViews

HELP = "mount a whole image (all layers merged) at DIR, read-only or --writable (overlayfs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF", type=daemon_ref,
                        help="image reference (registry/repo[:tag][@digest]) or oci:PATH[:TAG] (an OCI layout dir)")
    parser.add_argument("dir", metavar="DIR", help="where to mount it (created if missing)")
    parser.add_argument("--writable", action="store_true", help="overlayfs with an upper dir (changes are "
                        "discarded at umount)")
    add_client_arguments(parser)


def overlay_state_dir(run_dir: str, target: str) -> str:
    """Upper and work dirs of a --writable mount: derived from the target, so `umount` finds
    them even when the daemon has restarted meanwhile."""
    return os.path.join(run_dir, "overlay", hashlib.sha256(os.path.abspath(target).encode()).hexdigest()[:16])


def run(args: argparse.Namespace) -> int:
    run_dir = client_run_dir(args)
    target = os.path.abspath(args.dir)
    if mounts.mount_at(target) is not None:
        raise MountError(f"{target} is busy: something is already mounted there")
    created = make_dirs(target)
    try:
        _mount(args, run_dir, target)
    except BaseException:
        if args.writable:
            shutil.rmtree(overlay_state_dir(run_dir, target), ignore_errors=True)
        remove_dirs(created)
        raise
    print(target)
    return 0


def _mount(args: argparse.Namespace, run_dir: str, target: str) -> None:
    image = call(run_dir, "image", {"ref": args.ref})
    digests = [layer["digest"] for layer in image["layers"]]
    if args.writable:
        state = overlay_state_dir(run_dir, target)
        upper, work = os.path.join(state, "upper"), os.path.join(state, "work")
        make_dirs(upper)
        make_dirs(work)
        call(run_dir, "record_mount", {"ref": args.ref, "target": target, "layers": digests, "state_dir": state})
        lowers = [layer["path"] for layer in reversed(image["layers"])]
        _mount_or_forget(run_dir, target, lambda: mounts.overlay_mount(lowers, upper, work, target))
    else:
        config = load_config(args.config or None).config
        with open_store(StoreOptions.from_config(config.cache, image["cache_dir"])) as store:
            MergedViews(store).create(digests)
        view = call(run_dir, "open_view", {"ref": args.ref, "target": target, "layers": digests})
        _mount_or_forget(run_dir, target, lambda: mounts.bind_mount(view["path"], target, readonly=True))


def make_dirs(path: str) -> list[str]:
    """``mkdir -p path`` as a MountError naming the path on failure (a file in the way, a
    read-only file system); returns the directories it created, outermost first, so a failed
    mount can remove exactly those."""
    missing: list[str] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MountError(f"{probe} is not a directory" + (f": cannot mount at {path}" if probe != path else ""))
    created: list[str] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except OSError as exc:
            remove_dirs(created)
            raise MountError(f"cannot create {directory}: {exc.strerror or exc}") from None
        created.append(directory)
    return created


def remove_dirs(created: list[str]) -> None:
    """Undo `make_dirs`: innermost first; a directory something else filled meanwhile stays."""
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def _mount_or_forget(run_dir: str, target: str, mount: Callable[[], None]) -> None:
    try:
        mount()
    except LazyLayerError:
        call(run_dir, "umount", {"target": target})
        raise
