"""A descriptor's ``urls`` as a blob source: OCI non-distributable / Docker foreign layers.

Such a layer's descriptor lists URLs the blob can be fetched from with plain HTTP(S) GETs
(image-spec descriptor.md); the registry may hold no copy. Ranges are asked for with `Range`
and the answer is checked like the registry's (Content-Range inside the blob, body exactly that
long); a server that ignores `Range` sends the whole blob, which is cut down to what was asked.
The bytes are verified like any blob's (chunk digests, TOC digest, the blob digest at the end of
the background walk): the URL is only where they come from.

The first URL that answers with the descriptor's size is used; `refresh` asks them all again.
TLS follows `[registry]` (`ca_file`, `skip_verify` hosts); the body deadlines are the registry's
(transport.py), so a stalled server costs a job its own budget.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

import requests

from lazylayer.shared.errors import LazyLayerError, RegistryError
from lazylayer.workers.registry import deadline
from lazylayer.workers.registry.transport import safe_url
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.ranges import ByteRange, Part, coalesce, parse_content_range, range_header, slice_parts
from lazylayer.workers.registry.retry import Backoff, is_retryable_status
from lazylayer.workers.registry.transport import Transient, body_pieces, host_failure
from lazylayer.workers.sources.base import LayerSource, LayerSpec, check_ranges

log = logging.getLogger(__name__)

_SCHEMES = ("http", "https")


class URLHandler:
    """Serves layers whose descriptor has http(s) ``urls``."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options
        self.session = requests.Session()
        self.session.headers.update({"Accept-Encoding": "identity", "User-Agent": "lazylayer"})
        self.session.trust_env = False
        self.backoff = Backoff(options.min_backoff, options.max_backoff, options.max_retries)

    def open(self, spec: LayerSpec) -> LayerSource | None:
        urls = tuple(u for u in spec.urls if urlsplit(u).scheme in _SCHEMES)
        return URLSource(self, spec, urls) if urls else None

    def verify(self, url: str) -> bool | str:
        host = urlsplit(url).netloc
        if host in self.options.skip_verify or urlsplit(url).hostname in self.options.skip_verify:
            return False
        return self.options.ca_file or True

    def get(self, url: str, headers: dict[str, str]) -> requests.Response:
        """One GET, retried on connection errors, 429 and 5xx like registry requests."""
        attempt = 0
        while True:
            timeout = min(self.options.request_timeout, max(deadline.remaining(), 0.001))
            try:
                response = self.session.get(url, headers=headers, timeout=timeout, stream=True,
                                            verify=self.verify(url), allow_redirects=True)
            except requests.RequestException as exc:
                reason = f"{safe_url(url)}: {type(exc).__name__}"
            else:
                if not is_retryable_status(response.status_code):
                    return response
                response.close()
                reason = f"{safe_url(url)}: HTTP {response.status_code}"
            if attempt >= self.backoff.max_retries or deadline.remaining() <= 0:
                raise host_failure(reason)
            self.backoff.wait(attempt)
            attempt += 1


class URLSource(LayerSource):
    def __init__(self, handler: URLHandler, spec: LayerSpec, urls: tuple[str, ...]) -> None:
        super().__init__(spec)
        self._handler = handler
        self._urls = urls
        self._lock = threading.Lock()
        self._url: str | None = None

    @property
    def location(self) -> str:
        return safe_url(self._url or self._urls[0])

    @property
    def size(self) -> int:
        self._pick()
        return self.spec.size

    def _pick(self) -> str:
        """The first URL serving a blob of the descriptor's size (probed once, then kept)."""
        with self._lock:
            if self._url is not None:
                return self._url
        errors = []
        for url in self._urls:
            try:
                served = self._probe(url)
            except LazyLayerError as exc:
                errors.append(str(exc))
                continue
            if served == self.spec.size:
                with self._lock:
                    self._url = url
                return url
            errors.append(f"{safe_url(url)} serves {served} bytes, the descriptor says {self.spec.size}")
        raise RegistryError(f"layer {self.spec.digest}: no URL of its descriptor serves it: {'; '.join(errors)}")

    def _probe(self, url: str) -> int:
        response = self._handler.get(url, {"Range": "bytes=0-0"})
        try:
            if response.status_code == 206:
                return parse_content_range(response.headers.get("Content-Range"), safe_url(url))[2] or -1
            if response.status_code == 200 and (response.headers.get("Content-Length") or "").isdigit():
                return int(response.headers["Content-Length"])
            raise RegistryError(f"{safe_url(url)}: HTTP {response.status_code}", response.status_code)
        finally:
            response.close()

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        url = self._pick()
        check_ranges(ranges, self.spec.size, safe_url(url))
        wanted = [ByteRange(o, n) for o, n in ranges if n > 0]
        parts = [self._fetch(url, r) for r in coalesce(wanted, self._handler.options.coalesce_gap)]
        got = iter(slice_parts(wanted, parts, safe_url(url)))
        return [next(got) if n > 0 else b"" for _, n in ranges]

    def _fetch(self, url: str, wanted: ByteRange) -> Part:
        where = safe_url(url)
        attempt = 0
        while True:
            response = self._handler.get(url, {"Range": range_header([wanted])})
            try:
                if response.status_code == 206:
                    offset, length, total = parse_content_range(response.headers.get("Content-Range"), where)
                    if total not in (None, self.spec.size) or offset > wanted.offset or offset + length < wanted.end:
                        raise RegistryError(f"{where}: answered {response.headers.get('Content-Range')} for "
                                            f"bytes {wanted.offset}-{wanted.end - 1} of {self.spec.size}")
                    return Part(offset, self._body(response, length, where))
                if response.status_code == 200:  # Range ignored: the whole blob, cut down here
                    log.info("%s ignores Range: fetching the whole blob", where)
                    body = self._body(response, self.spec.size, where)
                    return Part(wanted.offset, body[wanted.offset:wanted.end])
                raise RegistryError(f"{where}: HTTP {response.status_code}", response.status_code)
            except Transient as exc:
                if attempt >= self._handler.backoff.max_retries:
                    raise host_failure(f"{where}: {exc}") from None
                self._handler.backoff.wait(attempt)
                attempt += 1
            finally:
                response.close()

    def _body(self, response: requests.Response, length: int, where: str) -> bytes:
        options = self._handler.options
        body = b"".join(body_pieces(response, length, where, options.request_timeout, options.min_rate))
        if len(body) != length:
            raise Transient(f"body ended after {len(body)} of {length} bytes")
        return body

    def refresh(self) -> None:
        with self._lock:
            self._url = None
        self._pick()
