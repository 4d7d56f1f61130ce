"""`lazylayer` entry point: finds the subcommands and turns typed errors into one clear line.

Each subcommand is a module of this package exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; dropping a module in is all it takes to add a command (S3QL-style: one
module per command). The module name, with ``_`` read as ``-``, is the command name.

Only the command being run is imported (the daemon, FUSE and registry stacks cost most of a
second to import); `lazylayer --help` and an unknown command import them all to list them.
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


def _command_names() -> dict[str, str]:
    """Command name -> module name, without importing anything."""
    package = importlib.import_module("lazylayer.daemon.cli")
    return {info.name.replace("_", "-"): info.name for info in sorted(pkgutil.iter_modules(package.__path__),
                                                                      key=lambda i: i.name)
            if not info.name.startswith("_") and info.name not in _NOT_COMMANDS}


def _commands(only: str | None = None) -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for name, module_name in _command_names().items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(f"lazylayer.daemon.cli.{module_name}")
        if hasattr(module, "run") and hasattr(module, "add_arguments"):
            found[name] = module
    return found


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` naming a command, only that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="lazylayer", description="Lazy pulling of container image layers (eStargz)."
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = _command_names()
    chosen = next((arg for arg in argv or () if arg in names), None)
    for name, module in _commands(chosen).items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
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
    except OSError as exc:  # the environment refused (permissions, read-only fs, ...): one line too
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lazylayer {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lazylayer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
