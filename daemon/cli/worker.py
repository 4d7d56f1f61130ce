"""`lazylayer worker [--config F] [--endpoint E] [--cache-dir D] [--capacity N]`: one fetcher process.

For running workers outside the daemon (supervisord ``numprocs``, systemd templates); the daemon's
own ``--workers N`` execs the same loop. It connects to the front's endpoint (by default
``ipc://RUN_DIR/workers.sock`` from the config), announces itself and serves jobs until SIGTERM.
"""

from __future__ import annotations

import argparse

from lazylayer.shared.config import load_config
from lazylayer.shared.logs import setup_logging
from lazylayer.workers.main import add_arguments as _worker_arguments
from lazylayer.workers.main import default_handlers, reload_logging, run_worker, settings_from_args

HELP = "run one fetcher worker connected to the daemon (for supervisord)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _worker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Logs follow the config (daemon.log_level/log_format), like the front's."""
    config = load_config(args.config or None).config
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    return run_worker(settings_from_args(args), default_handlers(args), reload_logging(args))
