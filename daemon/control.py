"""The control socket: how `lazylayer mount/umount/status/prefetch/fetch` talk to the daemon.

Wire: ZeroMQ REQ (CLI) -> ROUTER (daemon) at ``ipc://RUN_DIR/control.sock``; one msgpack map per
message. Request ``{"op": NAME, "params": {...}}``; reply ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"kind", "message", "attrs"}}``, where ``kind`` names a class of
shared/errors.py so the CLI re-raises the daemon's typed error and prints its one line.

Why ROUTER and not REP on the daemon side: requests are served concurrently in the daemon's
trio loop (a `mount` that waits for prefetch must not block `status`); each request runs as its
own task and replies to its own peer identity. The socket is pumped by daemon/zmqtrio.py like the
worker socket, so nothing here blocks the loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket as socket_module
from typing import Any, Awaitable, Callable, Mapping

import msgpack
import trio
import zmq

from lazylayer.daemon.zmqtrio import TrioSocket
from lazylayer.shared.config import load_config
from lazylayer.shared.errors import (LazyLayerError, NotFoundError, PermissionDeniedError, ProtocolError,
                                     RequestTimeoutError, WorkerError)
from lazylayer.shared.protocol import ErrorReply

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def control_path(run_dir: str) -> str:
    return os.path.join(run_dir, "control.sock")


def _error(exc: BaseException) -> dict[str, Any]:
    reply = ErrorReply.from_exception(0, exc)
    return {"kind": reply.kind, "message": reply.message, "attrs": reply.attrs}


class ControlServer:
    """Serves ``handlers`` (op name -> async fn(params) -> msgpack-able result)."""

    def __init__(self, run_dir: str, handlers: Mapping[str, Handler]) -> None:
        self.path = control_path(run_dir)
        self.handlers = dict(handlers)
        self._socket: TrioSocket | None = None
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        context = zmq.Context()
        raw = context.socket(zmq.ROUTER)
        try:
            self._socket = TrioSocket(raw, self._on_message)
            raw.bind(f"ipc://{self.path}")
            os.chmod(self.path, 0o600)  # the daemon's controls are root's (or the owner's)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._socket.pump)
                task_status.started()
        finally:
            if self._socket is not None:
                self._socket.close()
            context.term()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 3 or frames[1].bytes != b"":
            log.warning("control socket: dropping a malformed message (%d frames)", len(frames))
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_one, frames[0].bytes, frames[2].bytes)

    async def _serve_one(self, peer: bytes, body: bytes) -> None:
        try:
            request = msgpack.unpackb(body)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ProtocolError("control request is not {op, params}")
            handler = self.handlers.get(request["op"])
            if handler is None:
                raise ProtocolError(f"unknown control op {request['op']!r} (known: {', '.join(sorted(self.handlers))})")
            reply = {"ok": True, "result": await handler(dict(request.get("params") or {}))}
        except LazyLayerError as exc:
            reply = {"ok": False, "error": _error(exc)}
        except (ValueError, msgpack.UnpackException) as exc:
            reply = {"ok": False, "error": _error(ProtocolError(f"control request: {exc}"))}
        except Exception as exc:  # a bug must not take the daemon down; the CLI gets one line
            log.exception("control op failed")
            reply = {"ok": False, "error": _error(WorkerError(f"internal error: {type(exc).__name__}: {exc}"))}
        assert self._socket is not None
        await self._socket.send([peer, b"", msgpack.packb(reply)])


def call(run_dir: str, op: str, params: dict[str, Any] | None = None, *, timeout: float = 120.0) -> Any:
    """One request to the daemon (blocking; for the CLI). Raises the daemon's typed error."""
    path = control_path(run_dir)
    _probe(path)
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        socket.connect(f"ipc://{path}")
        socket.send(msgpack.packb({"op": op, "params": params or {}}))
        try:
            reply = msgpack.unpackb(socket.recv())
        except zmq.Again:
            raise RequestTimeoutError(f"the daemon did not answer {op!r} within {timeout:.0f} s") from None
    finally:
        socket.close(linger=0)
        context.term()
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    raise ErrorReply(0, error.get("kind", "error"), error.get("message", "unknown error"),
                     attrs=error.get("attrs") or {}).to_exception()


def _probe(path: str) -> None:
    """Fail at once, with the reason, where ZeroMQ would retry silently until the timeout: no
    socket (no daemon), or one this user may not connect to (it is root-only)."""
    probe = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    try:
        probe.connect(path)
    except PermissionError:
        raise PermissionDeniedError(f"permission denied: the control socket {path} is root-only "
                                    "(run lazylayer as root)") from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotFoundError(f"no lazylayer daemon is running (no control socket at {path})") from None
    finally:
        probe.close()


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command that talks to the daemon takes."""
    parser.add_argument("--config", default=os.environ.get("LAZYLAYER_CONFIG"), help="config file (TOML)")
    parser.add_argument("--run-dir", help="the daemon's run dir (default: daemon.run_dir)")


def client_run_dir(args: argparse.Namespace) -> str:
    if args.run_dir:
        return str(args.run_dir)
    return load_config(args.config or None).config.daemon.run_dir
