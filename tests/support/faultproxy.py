"""A fault-injecting HTTP proxy in front of a real registry.

The real registry cannot misbehave on demand, so tests put this proxy in front of it and add
rules: each rule matches some requests (method, path, Range) a number of times and does one
thing wrong - answers an error status, ignores Range (200 with the whole body), refuses
multi-range (400), corrupts a byte, drops the Content-Type of a 206, or cuts the body short.
`redirect_blobs` makes blob GETs answer 307 to a "storage" URL on the proxy, like registries
backed by object storage; `expire_redirects()` makes previously issued storage URLs answer 403.

Everything not matched is forwarded unchanged (the Host header too, so upload Locations the
registry builds point back at the proxy), its body streamed as it arrives. Sockets set TCP_NODELAY
(limits §5.2: Nagle trap).

Counting: every answer is recorded in ``seen`` with the body bytes sent, so a proxy placed
between a pull-through cache and the origin counts what the origin sent (`body_bytes`), and
``connections`` counts the TCP connections clients opened.
"""

from __future__ import annotations

import http.client
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length"}
_SLOW = ("hang", "stall", "trickle", "endless")
_BLOB_GET = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")
#: bytes copied at a time when a forwarded body is streamed
_STREAM_PIECE = 256 << 10


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int
    #: body bytes sent (for a streamed answer: set once it ended)
    bytes: int = 0


@dataclass
class Rule:
    """Do ``action`` to the next ``times`` matching requests (None: to all of them).

    Actions: "status" (answer ``status`` with ``headers``, not forwarded), "full_body" (forward
    without Range, answer 200), "reject_multirange" (400 when Range lists several ranges),
    "corrupt" (flip one body byte), "strip_content_type" (on 206), "truncate" (promise the
    full Content-Length, send half, close), "rewrite" (forward to the path ``target`` instead:
    a registry serving another blob under a digest), "serve" (answer 200 with ``body`` and
    ``headers``, not forwarded: a manifest no real registry would accept). ``corrupt=True`` also flips a byte after another
    forwarding action (e.g. a corrupt 200 full-body answer).

    Slow actions hold the connection until `release()` (or ``hold`` seconds): "hang" (no answer
    at all), "stall" (headers promising the whole body, then ``after`` bytes, then nothing),
    "trickle" (headers, then one byte every ``interval`` seconds), "endless" (200 without Range
    and without Content-Length: the whole blob, then zeros for as long as the client reads).
    """

    action: str
    times: int | None = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    method: str | None = "GET"
    path: str = r"^/v2/.+/blobs/"
    ranged: bool | None = None
    corrupt: bool = False
    target: str = ""
    body: bytes = b""
    after: int = 0
    interval: float = 0.2
    hold: float = 60.0
    #: slow actions: ask upstream without Range (a 200 with the whole blob) instead of forwarding it
    whole: bool = False

    def matches(self, method: str, path: str, range_header: str | None) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and method != self.method:
            return False
        if not re.search(self.path, path.split("?")[0]):
            return False
        if self.action == "reject_multirange" and not (range_header and "," in range_header):
            return False
        return self.ranged is None or self.ranged == (range_header is not None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up (a closed whole-blob answer, a deadline) is routine here."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class FaultProxy:
    def __init__(self, upstream_host: str) -> None:
        self.upstream = upstream_host
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        #: TCP connections clients opened (each answer keeps its connection open, HTTP/1.1)
        self.connections = 0
        self.redirect_blobs = False
        self.generation = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        threading.Thread(target=self._server.serve_forever, daemon=True, name="faultproxy").start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def reset(self) -> None:
        self.release()
        with self.lock:
            self.rules.clear()
            self.seen.clear()
            self.connections = 0
            self.redirect_blobs = False

    def release(self) -> None:
        """End every held connection now and stop holding: the registry is "fixed"."""
        with self.lock:
            self.rules = [r for r in self.rules if r.action not in _SLOW]
            self.released.set()
            self.released = threading.Event()

    def expire_redirects(self) -> None:
        with self.lock:
            self.generation += 1

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take_rule(self, method: str, path: str, range_header: str | None) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path, range_header):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def record(self, method: str, path: str, range_header: str | None, status: int, nbytes: int = 0) -> Seen:
        seen = Seen(method, path, range_header, status, nbytes)
        with self.lock:
            self.seen.append(seen)
        return seen

    def body_bytes(self, method: str | None = None, path: str = "") -> int:
        """Body bytes sent so far in answers to ``method`` requests whose path matches ``path``."""
        with self.lock:
            return sum(s.bytes for s in self.seen
                       if (method is None or s.method == method) and re.search(path, s.path.split("?")[0]))


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with proxy.lock:
                proxy.connections += 1

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, *, length: int | None = None) -> None:
            # Recorded before answering, so a test that got the answer also sees the record.
            sent = 0 if self.command == "HEAD" else len(body)
            proxy.record(self.command, self.path, self.headers.get("Range"), status, sent)
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _upstream(self, path: str, drop: tuple[str, ...]) -> tuple[http.client.HTTPConnection,
                                                                          http.client.HTTPResponse]:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in _HOP_BY_HOP and k.lower() not in drop}
            conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
            conn.request(self.command, path, body=body, headers=headers)
            return conn, conn.getresponse()

        def _forward(self, path: str, *, drop: tuple[str, ...] = ()) -> tuple[int, list[tuple[str, str]], bytes]:
            conn, response = self._upstream(path, drop)
            try:
                data = response.read()
                return response.status, [(k, v) for k, v in response.getheaders()
                                          if k.lower() not in _HOP_BY_HOP], data
            finally:
                conn.close()

        def _stream(self) -> None:
            """Forward unchanged, the body passed on as it arrives (a whole blob is not held
            first, as a real network path would not), its bytes counted when it ends."""
            conn, response = self._upstream(self.path, ())
            try:
                length = response.getheader("Content-Length")
                headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                if length is None or not length.isdigit():
                    self._answer(response.status, headers, response.read())
                    return
                seen = proxy.record(self.command, self.path, self.headers.get("Range"), response.status)
                self.send_response(response.status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                try:
                    while piece := response.read1(_STREAM_PIECE):
                        self.wfile.write(piece)
                        with proxy.lock:
                            seen.bytes += len(piece)
                except OSError:
                    self.close_connection = True  # the client hung up mid-body
            finally:
                conn.close()

        def _handle(self) -> None:
            range_header = self.headers.get("Range")
            storage = re.match(r"^/_storage/(\d+)(/.*)$", self.path)
            if storage:
                if int(storage.group(1)) != proxy.generation:
                    self._answer(403, [("Content-Type", "text/plain")], b"request has expired")
                    return
                status, headers, body = self._forward(storage.group(2), drop=("authorization",))
                self._answer(status, headers, body)
                return
            if proxy.redirect_blobs and self.command == "GET" and _BLOB_GET.match(self.path.split("?")[0]):
                location = f"http://{proxy.host}/_storage/{proxy.generation}{self.path}"
                self._answer(307, [("Location", location)], b"")
                return
            rule = proxy.take_rule(self.command, self.path, range_header)
            if rule is not None and rule.action == "status":
                self._answer(rule.status, list(rule.headers.items()), b'{"errors":[{"code":"INJECTED"}]}')
                return
            if rule is not None and rule.action == "serve":
                self._answer(200, list(rule.headers.items()), rule.body)
                return
            if rule is not None and rule.action == "reject_multirange":
                self._answer(400, [("Content-Type", "text/plain")], b"multiple ranges not supported")
                return
            if rule is not None and rule.action in _SLOW:
                self._hold(rule)
                return
            if rule is None:
                self._stream()
                return
            drop = ("range",) if rule is not None and rule.action == "full_body" else ()
            path = rule.target if rule is not None and rule.action == "rewrite" else self.path
            status, headers, body = self._forward(path, drop=drop)
            if rule is not None and (rule.action == "corrupt" or rule.corrupt) and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if rule is not None and rule.action == "strip_content_type" and status == 206:
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            if rule is not None and rule.action == "truncate" and len(body) > 1:
                self._answer(status, headers, body[: len(body) // 2], length=len(body))
                self.close_connection = True
                return
            self._answer(status, headers, body)

        def _hold(self, rule: Rule) -> None:
            """Misbehave slowly until released; the client giving up ends it too (broken pipe)."""
            released = proxy.released
            self.close_connection = True
            if rule.action == "hang":
                proxy.record(self.command, self.path, self.headers.get("Range"), 0)
                released.wait(rule.hold)
                return
            endless = rule.action == "endless"
            status, headers, body = self._forward(self.path, drop=("range",) if endless or rule.whole else ())
            proxy.record(self.command, self.path, self.headers.get("Range"), status)
            self.send_response(status)
            for name, value in headers:
                if not (endless and name.lower() == "content-range"):
                    self.send_header(name, value)
            if not endless:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if rule.action == "stall":
                    self.wfile.write(body[:rule.after])
                    self.wfile.flush()
                    released.wait(rule.hold)
                elif rule.action == "trickle":
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        if released.wait(rule.interval):
                            return
                else:
                    self.wfile.write(body)
                    while not released.is_set():
                        self.wfile.write(bytes(64 << 10))
            except OSError:
                pass  # the client hung up: what a deadline does

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    return Handler
