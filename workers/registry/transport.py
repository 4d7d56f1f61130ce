"""How bytes come off the wire: bodies read under deadlines, and transport failures as sentences.

Why body reads are shaped like this (issue 15): a registry that sends headers and then trickles,
stops, or never ends the body must cost a job its own budget and nothing more.
- **Idle** (``registry.request_timeout``): no byte for that long and the body is cut off.
- **Total**: ``request_timeout + size / min_rate``, and never past the job's deadline
  (workers/registry/deadline.py); a trickle that beats the idle timeout still ends.
- **Size**: never more than the caller's limit (the blob's size for a whole-blob answer): a
  declared Content-Length above it is refused before reading, a longer body is cut off at it.
Each wait is one ``read1`` (at most one recv) with the socket timeout set to what is left, so a
deadline holds to within a recv; measured on loopback, read1 costs no more than read(1 MiB).
Timeouts are not retried by the caller: a host that did not answer within its budget will not
answer better on a second try within the same budget (item 5: one fetch per failed read).
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import ssl
import time
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from lazylayer.shared.errors import RegistryError
from lazylayer.workers.registry import deadline

#: most bytes one read asks for (a recv returns what is there, up to this) [bytes]
READ_PIECE = 1 << 20
#: an answer's body up to this size is read before the answer is let go, to keep the connection
REUSE_BODY_MAX = 4096


class Transient(Exception):
    """A failure worth retrying that happened after the response headers (body read broke)."""


def host_failure(message: str) -> RegistryError:
    """A RegistryError that blames the host (unreachable, silent, stalled, broken): the front
    pauses that registry for a while (daemon/hostbackoff.py). The flag travels in the error's
    attributes over the wire."""
    error = RegistryError(message)
    error.host_failure = True  # type: ignore[attr-defined]
    return error


def safe_url(url: str) -> str:
    """A URL fit for messages: no userinfo, no query (pre-signed URLs carry signatures there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def release(response: requests.Response) -> None:
    """Let go of an answer whose body nobody needs, keeping its connection when that is cheap.

    Closing a streamed response with its body unread makes urllib3 drop the connection, and the
    next request to that registry pays a new TCP and TLS handshake: after every blob's 1-byte
    location probe, 401 challenge, retried 5xx or redirect. A body announced at most
    REUSE_BODY_MAX bytes is read (under the request's socket timeout) and the connection goes
    back to the pool; anything larger, unannounced or short is closed as before."""
    declared = response.headers.get("Content-Length")
    raw = response.raw
    if declared is not None and declared.isdigit() and int(declared) <= REUSE_BODY_MAX and raw is not None:
        try:
            got = raw.read(int(declared), decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError):
            got = None
        if got is not None and len(got) == int(declared):
            raw.release_conn()  # a later response.close() no longer reaches the connection
            return
    response.close()


def body_pieces(response: requests.Response, limit: int, what: str, idle: float,
                min_rate: float) -> Iterator[bytes]:
    """The body's bytes in pieces, under the idle, total and size limits above (closes the
    response). Raises RegistryError when a limit is hit, Transient when the connection broke."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        response.close()
        raise host_failure(f"{what}: the registry announces a {declared}-byte body where at most {limit} "
                            "bytes can be right; refused")
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    total = idle + (limit / min_rate if min_rate > 0 else math.inf)
    cutoff = time.monotonic() + min(total, deadline.remaining())
    got = 0
    try:
        while True:
            left = cutoff - time.monotonic()
            if left <= 0:
                raise _unfinished(what, got, total)
            wait = min(idle, left)
            if sock is not None:
                sock.settimeout(wait)
            try:
                piece = response.raw.read1(min(READ_PIECE, limit + 1 - got), decode_content=False)
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
                if wait < idle:
                    raise _unfinished(what, got, total) from None
                raise host_failure(f"{what}: the body stalled: no byte for {idle:g} s after {got} bytes; "
                                   "cut off") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Transient(f"reading the body failed after {got} bytes: {describe(exc, response.url)}") from None
            if not piece:
                return
            got += len(piece)
            if got > limit:
                raise host_failure(f"{what}: the body goes on past the {limit} bytes it can have; cut off")
            yield piece
    finally:
        response.close()


def _unfinished(what: str, got: int, total: float) -> RegistryError:
    limit = ("the request's deadline" if deadline.remaining() <= total
             else f"the {total:.3g} s allowed for the whole body")
    return host_failure(f"{what}: the body was not complete after {got} bytes at {limit}; cut off")


# -- failures as sentences ---------------------------------------------------------------------

def host_port(url: str) -> str:
    """``host:port`` of a URL, the port spelled out even when it is the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def is_timeout(exc: BaseException) -> bool:
    """The host did not answer in time (as opposed to refusing, resetting, failing TLS)."""
    return _classify(exc)[0] == "timeout"


def describe(exc: BaseException, url: str, timeout: float | None = None) -> str:
    """What failed, in words and with the host and port, instead of a library's repr chain:
    "cannot connect to 127.0.0.1:5000: connection refused"."""
    kind, e = _classify(exc)
    where = host_port(url)
    within = f" within {round(timeout, 1):g} s" if timeout is not None else ""  # 0.999 s of a job budget reads "1 s"
    if kind == "cert":
        return f"TLS with {where} failed: its certificate is not trusted ({e.verify_message})"  # type: ignore[attr-defined]
    if kind == "name":
        return f"cannot resolve the host name {urlsplit(url).hostname}"
    if kind == "refused":
        return f"cannot connect to {where}: connection refused"
    if kind == "reset":
        return f"{where} reset the connection"
    if kind == "closed":
        return f"{where} closed the connection without answering"
    if kind == "incomplete":
        return f"{where} closed the connection in the middle of the answer"
    if kind == "timeout":
        if isinstance(e, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
            return f"cannot connect to {where}: no answer{within}"
        return f"{where} accepted the connection but sent no answer{within}"
    if kind == "tls":
        return f"TLS with {where} failed: {getattr(e, 'reason', None) or 'handshake error'}"
    if isinstance(e, OSError) and e.strerror:
        return f"talking to {where} failed: {e.strerror[0].lower()}{e.strerror[1:]}"
    text = re.sub(r"\w+://\S+", "<url>", str(e))[:200]
    return f"talking to {where} failed: {type(e).__name__}" + (f": {text}" if text else "")


#: (kind, exception types) in the order they are looked for among the causes: the most
#: specific first (urllib3's NewConnectionError is also a ConnectTimeoutError, so a refused
#: connection must be recognised before a timeout is).
_KINDS: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    ("cert", (ssl.SSLCertVerificationError,)),
    ("name", (urllib3.exceptions.NameResolutionError, socket.gaierror)),
    ("refused", (ConnectionRefusedError,)),
    ("reset", (ConnectionResetError,)),
    ("closed", (http.client.RemoteDisconnected,)),
    ("incomplete", (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)),
    ("timeout", (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)),
    ("tls", (ssl.SSLError,)),
    ("os", (OSError,)),
)


def _classify(exc: BaseException) -> tuple[str, BaseException]:
    causes = list(_causes(exc))
    for kind, types in _KINDS:
        for e in causes:
            if isinstance(e, types) and not (kind == "os" and not e.strerror):  # type: ignore[attr-defined]
                return kind, e
    return "other", causes[-1]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (cause, context, urllib3's ``reason``, exception args),
    outermost first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]
        queue.extend(x for x in inner if isinstance(x, BaseException))
