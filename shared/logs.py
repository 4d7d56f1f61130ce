"""Logging for every lazylayer process: one line per event, text or JSON, level from config.

Why here: the front, each worker and the CLI must log the same way (supervisord collects their
stderr side by side), and the level must be changeable at run time (SIGHUP reload), so the
handler is installed once and `set_level` only touches the root logger's level. Secrets never
reach a log line: the registry code keeps tokens and passwords out of its messages and errors, and
the formatters here blank the userinfo of any URL (a mirror configured as
``https://user:password@host``) in every line, whoever wrote it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact(value: Any) -> Any:
    """``value`` with the userinfo of every URL in it replaced by ``***`` (strings, and the
    strings inside lists, tuples and dicts): for logs, `config show`, status and metrics."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\g<scheme>***@", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


class TextFormatter(logging.Formatter):
    """The text line format, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339 UTC), level, logger, pid, message, and the
    exception text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(redact(entry), ensure_ascii=False)


class Every:
    """A log line that would repeat for every chunk is said once per ``seconds``."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self._last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.seconds:
            return False
        self._last = now
        return True


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one line-per-event handler on ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    logging.captureWarnings(True)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
