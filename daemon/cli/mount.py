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
from typing import Callable

from lazylayer.daemon import mounts
from lazylayer.daemon.control import add_client_arguments, call, client_run_dir
from lazylayer.shared.config import load_config
from lazylayer.shared.errors import LazyLayerError, MountError
from lazylayer.shared.store.env import StoreOptions, open_store
from lazylayer.shared.store.merged import MergedViews

HELP = "mount a whole image (all layers merged) at DIR, read-only or --writable (overlayfs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF", help="image reference (registry/repo[:tag][@digest])")
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
    os.makedirs(target, exist_ok=True)
    image = call(run_dir, "image", {"ref": args.ref})
    digests = [layer["digest"] for layer in image["layers"]]
    if args.writable:
        state = overlay_state_dir(run_dir, target)
        upper, work = os.path.join(state, "upper"), os.path.join(state, "work")
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        call(run_dir, "record_mount", {"ref": args.ref, "target": target, "layers": digests, "state_dir": state})
        lowers = [layer["path"] for layer in reversed(image["layers"])]
        _mount_or_forget(run_dir, target, lambda: mounts.overlay_mount(lowers, upper, work, target))
    else:
        config = load_config(args.config or None).config
        with open_store(StoreOptions.from_config(config.cache, image["cache_dir"])) as store:
            MergedViews(store).create(digests)
        view = call(run_dir, "open_view", {"ref": args.ref, "target": target, "layers": digests})
        _mount_or_forget(run_dir, target, lambda: mounts.bind_mount(view["path"], target, readonly=True))
    print(target)
    return 0


def _mount_or_forget(run_dir: str, target: str, mount: Callable[[], None]) -> None:
    try:
        mount()
    except LazyLayerError:
        call(run_dir, "umount", {"target": target})
        raise
