"""`lazylayer holder [--config F] [--run-dir DIR]`: keep the front's FUSE connection open so a
crashed or upgraded front is taken over by the next one instead of breaking every mount
(daemon/holder.py). Run it before the front, under supervisord as its own program. SIGTERM is the
real stop: it unmounts the `lazylayer mount` views and the layer store."""

from __future__ import annotations

import argparse
import os

from lazylayer.daemon.holder import run_holder
from lazylayer.shared.config import load_config
from lazylayer.shared.logs import setup_logging

HELP = "hold the FUSE connection across front restarts and upgrades (run beside `lazylayer daemon`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    parser.add_argument("--run-dir", help="where the front's sockets are (daemon.run_dir)")


def run(args: argparse.Namespace) -> int:
    overrides = {"daemon.run_dir": args.run_dir} if args.run_dir else {}
    config = load_config(args.config or None, overrides=overrides).config
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    return run_holder(os.path.abspath(config.daemon.run_dir))
