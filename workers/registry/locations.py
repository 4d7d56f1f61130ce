"""Where each blob is read from: the location probe, redirects, mirrors passed over.

A blob's location is resolved once per client (reference §3.1-3.2): a ranged GET without
following redirects, because some registries answer HEAD without a Location, and never a HEAD
(a pull-through cache fetches the whole blob for one). The probe asks for one byte, or, when the
caller is about to read the blob's tail (opening a layer: footer and small TOC), for that tail,
which is then kept for that one read: a layer resolve costs one request less.

A mirror answering the probe with the whole blob is a pull-through cache still filling its copy:
it is passed over (rangesupport.py marks it) and, within a share of the blob, urgent reads go to
the next source while the others wait for the mirror's copy (client.py says how).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import requests

from lazylayer.shared.errors import RegistryError
from lazylayer.workers.registry import deadline
from lazylayer.workers.registry.hosts import Endpoint, endpoints_for
from lazylayer.workers.registry.ranges import ByteRange, Part, parse_content_range, range_header
from lazylayer.workers.registry.reference import Reference
from lazylayer.workers.registry.transport import Transient, release, safe_url

if TYPE_CHECKING:
    from lazylayer.workers.registry.client import RegistryClient

log = logging.getLogger(__name__)

#: what a plain location probe asks for
FIRST_BYTE = ByteRange(0, 1)
#: share of a blob read from the next source while a mirror fills its copy, per client
FALLBACK_SHARE = 1 / 64
#: ... but at least this much (the footer, TOC and first files of a small layer) [bytes]
MIN_FALLBACK = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class BlobLocation:
    """Where a blob's bytes are served from, after one redirect hop at most."""

    url: str
    endpoint: Endpoint
    size: int
    redirected: bool
    #: a mirror passed over because it answered ranged reads with whole blobs ("" if none)
    instead_of: str = ""
    #: the blob's last bytes, when the probe asked for them: the next read of exactly them is
    #: served from here, once (`BlobLocations.kept_tail`)
    tail: Part | None = None


class BlobLocations:
    """The blob locations of one `RegistryClient`, which makes their requests."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str, str], BlobLocation] = {}
        #: bytes of each blob read from another source while its mirror was passed over
        self._fallback_bytes: dict[str, int] = {}

    def clear(self) -> None:
        """Forget every location: the next read of each blob probes it again."""
        with self._lock:
            self._known.clear()

    def get(self, ref: Reference, digest: str, refresh: bool = False, probe: ByteRange = FIRST_BYTE) -> BlobLocation:
        """Where the blob is read from: the first source that answers a ranged GET of ``probe``,
        passing over mirrors that answer it, or did lately, with the whole blob. A location that
        passed a mirror over is resolved again once that mirror's mark expired. A probe past the
        blob's end (416: it is smaller than the caller thought) is asked again for its first
        byte, whose answer says its size."""
        client, support = self._client, self._client.range_support
        key = (ref.registry, ref.repository, digest)
        with self._lock:
            known = self._known.get(key)
        if known and not refresh and not (known.instead_of and support.usable(known.instead_of)):
            return known
        what = f"blob {digest} of {ref.name}"
        headers = {"Range": range_header([probe])}
        answers = (200, 206) if probe == FIRST_BYTE else (200, 206, 416)
        endpoints = endpoints_for(ref.registry, client.options)
        while True:
            candidates = [e for e in endpoints[:-1] if support.usable(e.host)] + endpoints[-1:]
            response, endpoint = client.api("GET", ref, f"blobs/{digest}", ok=(*answers, *_REDIRECTS),
                                            headers=headers, allow_redirects=False, what=what, endpoints=candidates)
            if not (endpoint.is_mirror and response.status_code == 200):
                break
            self.passed_over(response, endpoint, digest)
        ahead = endpoints[:endpoints.index(endpoint)]
        instead_of = next((e.host for e in ahead if not support.usable(e.host)), "")
        if endpoint.is_mirror and response.status_code == 206:
            support.ranged(endpoint.host)
        url = response.url
        redirected = response.status_code in _REDIRECTS
        try:
            if redirected:
                target = response.headers.get("Location")
                if not target:
                    raise RegistryError(f"{what}: redirect without a Location", response.status_code)
                url = urljoin(url, target)
                release(response)
                response = client.send("GET", url, ref=ref, endpoint=endpoint, authenticate=False, headers=headers,
                                       allow_redirects=False)
                if response.status_code not in answers:
                    raise client.error(response, f"{what} at {safe_url(url)}")
            past_end = response.status_code == 416
            if not past_end:
                size = total_size(response, what)
                tail = self._probed_tail(response, probe, size, what) if probe != FIRST_BYTE else None
        finally:
            release(response)
        if past_end:
            return self.get(ref, digest, refresh=True)
        location = BlobLocation(url, endpoint, size, redirected, instead_of, tail)
        with self._lock:
            self._known[key] = location
        log.debug("%s is served from %s (%d bytes)", what, safe_url(url), size)
        return location

    def _probed_tail(self, response: requests.Response, probe: ByteRange, size: int, what: str) -> Part | None:
        """The body of a probe that asked for the blob's tail, if it is exactly that range of a
        blob of the size the caller expects (anything else is left to a plain read)."""
        if response.status_code != 206 or probe.end != size:
            return None
        offset, length, _ = parse_content_range(response.headers.get("Content-Range"), what)
        if (offset, length) != (probe.offset, probe.length):
            return None
        try:
            body = self._client.read_body(response, probe.length + 1, what)
        except Transient:  # the read that wanted them asks again, with its retries
            return None
        return Part(offset, body) if len(body) == probe.length else None

    def kept_tail(self, ref: Reference, digest: str, wanted: ByteRange) -> bytes | None:
        """The probe's tail bytes, once, if ``wanted`` is exactly them."""
        with self._lock:
            location = self._known.get((ref.registry, ref.repository, digest))
            tail = location.tail if location is not None else None
            if location is None or tail is None or (tail.offset, len(tail.data)) != (wanted.offset, wanted.length):
                return None
            location.tail = None
        return bytes(tail.data)

    def passed_over(self, response: requests.Response, endpoint: Endpoint, digest: str) -> None:
        """A mirror sent the whole blob for a ranged read: close it unread, mark the mirror."""
        support = self._client.range_support
        response.close()
        support.full_body(endpoint.host)
        log.info("mirror %s answered a ranged read of %s with the whole blob (not cached there yet?); "
                 "reading ranges from the next source for %.0f s", endpoint.host, digest, support.wait(endpoint.host))

    def wait_for_mirror(self, location: BlobLocation, digest: str, wanted: int) -> bool:
        """Whether to wait for the passed-over mirror instead of reading ``wanted`` more bytes
        from the next source: an urgent read within this blob's fallback share goes ahead;
        others wait (True) until the mirror is asked again, unless the job's deadline would
        pass first."""
        if not location.instead_of:
            return False
        client, support = self._client, self._client.range_support
        share = max(MIN_FALLBACK, int(location.size * FALLBACK_SHARE))
        with self._lock:
            spent = self._fallback_bytes.get(digest, 0)
            pause = support.wait(location.instead_of)
            if ((deadline.urgent() and spent + wanted <= share) or support.gave_up(location.instead_of)
                    or pause + client.options.request_timeout / 2 >= deadline.remaining()):
                self._fallback_bytes[digest] = spent + wanted
                return False
        log.info("blob %s: %d bytes read beside mirror %s already; waiting %.1f s for its copy",
                 digest, spent, location.instead_of, pause)
        client.backoff.sleep(pause)
        return True


def total_size(response: requests.Response, what: str) -> int:
    """The blob's size from a probe's answer: Content-Range's total, or a 200's length."""
    if response.status_code == 206:
        _, _, total = parse_content_range(response.headers.get("Content-Range"), what)
        if total is None:
            raise RegistryError(f"{what}: the registry did not say how large the blob is")
        return total
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise RegistryError(f"{what}: the registry did not say how large the blob is")
    return int(length)
