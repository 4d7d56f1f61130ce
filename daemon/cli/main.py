"""`lazylayer` entry point: finds the subcommands and turns typed errors into one clear line.

Each subcommand is a module of this package exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; dropping a module in is all it takes to add a command (S3QL-style: one
module per command). The module name, with ``_`` read as ``-``, is the command name.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

from lazylayer.shared.errors import LazyLayerError

_NOT_COMMANDS = {"main", "output"}


def _commands() -> dict[str, ModuleType]:
    package = importlib.import_module("lazylayer.daemon.cli")
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in _NOT_COMMANDS:
            continue
        module = importlib.import_module(f"lazylayer.daemon.cli.{info.name}")
        if hasattr(module, "run") and hasattr(module, "add_arguments"):
            found[info.name.replace("_", "-")] = module
    return dict(sorted(found.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazylayer", description="Lazy pulling of container image layers (eStargz)."
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _commands().items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except LazyLayerError as exc:
        print(f"lazylayer {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        print(f"lazylayer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
