"""`lazylayer daemon [--config F] [--workers N] [--mountpoint DIR] [--cache-dir DIR] [--run-dir DIR]
[--takeover]`: the FUSE front, in the foreground (daemon/service.py). Flags override the config file
and the environment. SIGTERM/SIGINT unmount cleanly, or with a `lazylayer holder` running leave
everything mounted for the next front, which takes the connection over by itself (`--takeover`:
refuse to start otherwise); SIGHUP re-reads the config's live knobs.

The workers' forker is launched before anything else, even the config (daemon/earlyworkers.py
says why), so every other module is imported only once it runs."""

from __future__ import annotations

import argparse
import gc
import os

from lazylayer.daemon import startfiles
from lazylayer.daemon.earlyworkers import EarlyWorkers
from lazylayer.shared.gcpause import gc_paused

HELP = "run the FUSE front (layer store + image views) with its fetcher workers, in the foreground"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    parser.add_argument("--workers", type=int, help="fetcher workers to spawn; 0 = external only (workers.count)")
    parser.add_argument("--mountpoint", help="where the layer store is mounted (daemon.mountpoint)")
    parser.add_argument("--cache-dir", help="LMDB cache directory (cache.dir)")
    parser.add_argument("--run-dir", help="sockets and pid file (daemon.run_dir)")
    parser.add_argument("--takeover", action="store_true",
                        help="take the running mounts over from the FUSE connection holder; fail if it has none")


def run(args: argparse.Namespace) -> int:
    startfiles.start()  # the disk reads what both processes are about to import, ahead of them
    # first: its imports overlap everything below (`--workers 0`: there is nothing to fork)
    workers = EarlyWorkers.launch() if args.workers != 0 else EarlyWorkers(0)
    try:
        return _run(args, workers)
    finally:
        workers.stop()  # again (it is idempotent) for a daemon that failed before it began them


def _run(args: argparse.Namespace, workers: EarlyWorkers) -> int:
    from lazylayer.daemon.holder import take_connection
    from lazylayer.daemon.startup import DaemonOptions, lock_run_dir, worker_command
    from lazylayer.shared.config import load_config
    from lazylayer.shared.logs import setup_logging
    from lazylayer.shared.perms import private_umask
    from lazylayer.shared.plugins import check_config

    flags = {"workers.count": args.workers, "daemon.mountpoint": args.mountpoint, "cache.dir": args.cache_dir,
             "daemon.run_dir": args.run_dir}
    overrides = {key: value for key, value in flags.items() if value is not None}
    config = load_config(args.config or None, overrides=overrides).config
    check_config(config)  # a plug-in name nobody provides: said here, not by every worker it starts
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    options = DaemonOptions(config, args.config or None, overrides, args.takeover)
    private_umask()  # sockets, cache files and overlay dirs we create are root's alone
    # before the lock: an attached front hands over (and lets the lock go) first
    holder, handover = take_connection(options.run_dir, options.mountpoint, options.takeover)
    try:
        lock = lock_run_dir(options.run_dir)
        workers.begin(config.workers.count, worker_command(options))
        try:
            with gc_paused():  # ~300 modules' objects, no cycles to find: collections only cost time
                import trio

                from lazylayer.daemon.service import run_daemon
            gc.freeze()  # what start-up made lives as long as the front: later collections skip it
            return trio.run(run_daemon, options, lock, workers, holder, handover)
        finally:
            workers.stop()  # before a front waiting for our hand-over can start its own
    finally:
        if holder is not None:  # last: a front waiting for our hand-over then finds the lock free
            holder.close()
