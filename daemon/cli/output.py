"""Shared CLI output: JSON for machines, tables and progress bars for people.

Progress bars appear only on a terminal (stderr), so piped and `--json` output stays clean.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Protocol


def print_json(obj: Any) -> None:
    """Stable machine output: sorted keys, one document, trailing newline."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")


def human_size(size: int) -> str:
    """Bytes with a unit people read at a glance: ``670 B``, ``12.0 KiB``, ``2.0 GiB``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value, unit = float(size), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{size} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    Console(soft_wrap=False, width=max(120, Console().width)).print(table)


class Progress(Protocol):
    def advance(self, amount: int) -> None: ...


class _NullProgress:
    def advance(self, amount: int) -> None:
        pass


class _RichProgress:
    def __init__(self, bar: Any, task: Any) -> None:
        self._bar, self._task = bar, task

    def advance(self, amount: int) -> None:
        self._bar.update(self._task, advance=amount)


@contextmanager
def progress(description: str, total: int | None, unit_bytes: bool = True) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal; a no-op otherwise."""
    if not sys.stderr.isatty():
        yield _NullProgress()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress,
                               TextColumn, TimeRemainingColumn, TransferSpeedColumn)

    columns = [TextColumn("{task.description}"), BarColumn()]
    if unit_bytes:
        columns += [DownloadColumn(), TransferSpeedColumn()]
    columns.append(TimeRemainingColumn())
    with RichProgress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield _RichProgress(bar, bar.add_task(description, total=total))
