"""A plain HTTP server for blobs, with `Range` (one range per request) - what a non-distributable
layer's descriptor `urls` point at. Not a registry: no API, no auth, just files by name.

    with BlobServer() as server:
        server.blobs["app.blob"] = data
        url = server.url("app.blob")       # http://127.0.0.1:PORT/app.blob
        server.requests                     # paths asked for, in order
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


class BlobServer:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range", "")))
                data = server.blobs.get(name)
                if data is None:
                    self.send_error(404)
                    return
                match = _RANGE.fullmatch(self.headers.get("Range", ""))
                if match:
                    first, last = int(match.group(1)), min(int(match.group(2)), len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
                    data = data[first:last + 1]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "BlobServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
