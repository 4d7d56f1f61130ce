"""`lazylayer umount DIR`: undo `lazylayer mount` - unmount DIR, let the daemon release the
image's layers, and drop a --writable mount's upper/work dirs."""

from __future__ import annotations

import argparse
import os
import shutil

from lazylayer.daemon import mounts
from lazylayer.daemon.cli.mount import overlay_state_dir
from lazylayer.daemon.control import add_client_arguments, call, client_run_dir
from lazylayer.shared.errors import MountError, NotFoundError

HELP = "unmount an image mounted with `lazylayer mount`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the directory given to `lazylayer mount`")
    add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    run_dir = client_run_dir(args)
    target = os.path.abspath(args.dir)
    if mounts.mount_at(target) is None:
        raise MountError(f"{target} is not mounted")
    mounts.unmount(target)
    try:
        call(run_dir, "umount", {"target": target})
    except NotFoundError:
        pass  # the daemon restarted (or is gone): nothing of this mount is left to release there
    shutil.rmtree(overlay_state_dir(run_dir, target), ignore_errors=True)
    return 0
