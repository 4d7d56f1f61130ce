"""The registry HTTP client: requests, auth, retries, mirrors, and ranged blob reads.

requests keeps the sessions, connection pools, TLS and the auth dance; bodies are read straight
from the underlying urllib3 response (`resp.raw.read1`, under the idle, total and size limits of
transport.py), which limits §5.2 measured 2-3x faster than requests' `.content` (10 KiB chunks).
Every request asks for `Accept-Encoding: identity` so the bytes we get are the bytes the digests
talk about. Every wait is clipped to the running job's deadline (deadline.py).

Blob reads follow reference §3.1-3.2: the blob's location is resolved once (locations.py: a
ranged GET without following redirects, because some registries answer HEAD without a Location)
and reused; wanted ranges are coalesced and sent as one multi-range request. Quirks handled: 200
with the whole blob (the bytes are then verified against the blob digest and the ranges cut out
while streaming), 206 without Content-Type, 400 to multi-range (that host goes to single-range
mode for good), 403 on a redirected URL (the pre-signed URL expired: resolve again, once).

Mirrors (README "Running a fleet"): a mirror that answers a ranged read with the whole blob is a
pull-through cache that has not cached it yet. Its body is closed unread (reading it makes the
cache fetch the blob from the origin once more), the mirror is marked (rangesupport.py) and the
ranges of urgent jobs (deadline.urgency: a reader waits) come from the next source, up to
``locations.FALLBACK_SHARE`` of the blob per blob and client; other reads, and urgent ones past that
share, wait for the mirror's copy (asking again when the mark expires) while the job's deadline
allows, so a cluster costs the origin about one blob and the first byte does not wait. A mirror
that keeps sending whole blobs (rangesupport.GIVE_UP_STRIKES in a row) is not waited for any
more. No request of the read path is a HEAD: a cache answers HEAD of a blob it lacks by
fetching the whole blob (twice, for docker-registry 2.8).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol
from urllib.parse import urlsplit

import requests
import urllib3

from lazylayer.shared.errors import (AuthError, DigestMismatchError, NotFoundError, RegistryError)
from lazylayer.workers.registry import deadline
from lazylayer.workers.registry.auth import Authenticator, CredentialLookup, DockerConfigCredentials
from lazylayer.workers.registry.hosts import Endpoint, RegistryOptions, endpoints_for
from lazylayer.workers.registry.locations import FIRST_BYTE, BlobLocation, BlobLocations
from lazylayer.workers.registry.reference import Reference
from lazylayer.workers.registry.ranges import (
    ByteRange, Part, coalesce, multipart_boundary, parse_content_range, parse_multipart,
    range_header, slice_parts,
)
from lazylayer.workers.registry.rangesupport import RangeSupport
from lazylayer.workers.registry.retry import Backoff, is_retryable_status, parse_retry_after
from lazylayer.workers.registry.transport import (Transient, body_pieces, describe, host_failure, is_timeout, release,
                                                  safe_url)

log = logging.getLogger(__name__)

#: slack allowed above the wanted bytes for multipart framing, per part [bytes]
MULTIPART_SLACK_PER_PART = 512
#: bodies we read whole for small documents (manifests, configs, error bodies) are capped [bytes]
MAX_DOCUMENT_SIZE = 8 << 20
#: bytes of an error answer read for the registry's message [bytes]
ERROR_BODY_PREFIX = 4096

Progress = Callable[[int], None]
#: passes every piece of a whole-blob body, at its offset, to the function given; returns the size
BlobStream = Callable[[Callable[[int, bytes], None]], int]


class WholeBlobSink(Protocol):
    """Takes over a whole-blob answer to a ranged read (workers/wholeblob.py)."""

    def run(self, stream: BlobStream, until: int) -> None:
        """Run ``stream`` (it checks the blob digest at its end) and return once the bytes
        before ``until`` have passed; the rest may go on streaming after the return."""


class RegistryClient:
    """One per process (or per thread group): holds the HTTP session, tokens and blob locations."""

    def __init__(self, options: RegistryOptions | None = None,
                 credentials: CredentialLookup | None = None, *,
                 backoff: Backoff | None = None, range_support: RangeSupport | None = None) -> None:
        self.options = options or RegistryOptions()
        self.session = requests.Session()
        self.session.headers.update({"Accept-Encoding": "identity", "User-Agent": "lazylayer"})
        self.session.trust_env = False
        if credentials is None:
            credentials = DockerConfigCredentials(self.options.credentials_file or None)
        self.backoff = backoff or Backoff(self.options.min_backoff, self.options.max_backoff,
                                          self.options.max_retries)
        self.auth = Authenticator(self.session, credentials, self.options.request_timeout, self._verify_for_host,
                                  self.options.min_rate)
        self._lock = threading.Lock()
        self._single_range_hosts: set[str] = set()
        #: which mirrors serve ranges now (shared by the clients of one worker)
        self.range_support = range_support or RangeSupport()
        self.locations = BlobLocations(self)
        if self.options.skip_verify:
            # Said once here instead of urllib3 warning on every request.
            log.warning("TLS certificates are not verified for %s", ", ".join(self.options.skip_verify))
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def close(self) -> None:
        self.session.close()

    # ---- plumbing -----------------------------------------------------------------------

    def _verify_for_host(self, host: str) -> bool | str:
        for endpoint in endpoints_for(host, self.options):
            if endpoint.host == host:
                return endpoint.verify
        return self.options.ca_file or True

    @staticmethod
    def _scope(ref: Reference, push: bool) -> str:
        return f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"

    def send(self, method: str, url: str, *, ref: Reference, endpoint: Endpoint, push: bool = False,
             authenticate: bool = True, headers: dict[str, str] | None = None,
             data: bytes | BinaryIO | None = None, params: dict[str, str] | None = None,
             allow_redirects: bool = True, stream: bool = True) -> requests.Response:
        """One logical request: auth header, one 401 round, retries with backoff.

        Returns whatever final response arrives (the caller judges the status); raises
        RegistryError when the host cannot be reached within the retry budget.
        """
        scope = self._scope(ref, push)
        # A mirror gets its own credentials, never the origin's.
        credentials_for = endpoint.host if endpoint.is_mirror else ref.registry
        attempt = 0
        answered_challenge = False
        start = data.tell() if hasattr(data, "tell") else None
        began = time.monotonic()
        while True:
            sent = dict(headers or {})
            if authenticate:
                header = self.auth.header(endpoint.host, credentials_for, scope)
                if header:
                    sent["Authorization"] = header
            if start is not None:
                data.seek(start)  # type: ignore[union-attr]
            timeout = self._timeout(f"{method} {safe_url(url)}")
            try:
                response = self.session.request(
                    method, url, headers=sent, data=data, params=params, stream=stream,
                    allow_redirects=allow_redirects, timeout=timeout, verify=endpoint.verify,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = describe(exc, url, timeout)
                tried = f"gave up after {attempt + 1} attempt{'s' if attempt else ''} in {time.monotonic() - began:.1f} s"
                # A host that did not answer within its budget gets no second try within the
                # same budget (one fetch per failed read); nor does a certificate problem.
                delay = self._retry_delay(attempt)
                if isinstance(exc, requests.exceptions.SSLError) or is_timeout(exc) or delay is None:
                    raise host_failure(f"{method} {safe_url(url)}: {reason} ({tried})") from None
                log.info("%s %s: %s; retrying", method, safe_url(url), reason)
                self.backoff.sleep(delay)
                attempt += 1
                continue
            except requests.RequestException as exc:
                raise RegistryError(f"{method} {safe_url(url)}: {describe(exc, url)}") from None
            if response.status_code == 401 and authenticate and not answered_challenge:
                release(response)
                self.auth.challenge(endpoint.host, credentials_for, scope, response)
                answered_challenge = True
                continue
            delay = (self._retry_delay(attempt, parse_retry_after(response.headers.get("Retry-After")))
                     if is_retryable_status(response.status_code) else None)
            if delay is not None:
                release(response)
                log.info("%s %s: %d; retrying", method, safe_url(url), response.status_code)
                self.backoff.sleep(delay)
                attempt += 1
                continue
            return response

    def _timeout(self, what: str) -> float:
        """One request's connect and idle timeout: ``request_timeout``, clipped to the job's deadline."""
        left = deadline.remaining()
        if left <= 0:  # the job's time went elsewhere (queue, earlier requests): not the registry's fault
            raise RegistryError(f"{what}: the request's deadline passed before it could be sent")
        return min(self.options.request_timeout, left)

    def _retry_delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """The backoff before another attempt, or None: retries used up, or the wait would end
        past the job's deadline."""
        if attempt >= self.backoff.max_retries:
            return None
        delay = self.backoff.delay(attempt, retry_after)
        return delay if delay < deadline.remaining() else None

    def api(self, method: str, ref: Reference, path: str, *, push: bool = False,
            ok: Iterable[int] = (200,), what: str = "", endpoints: list[Endpoint] | None = None,
            **kwargs) -> tuple[requests.Response, Endpoint]:
        """Call `/v2/<repo>/<path>` on the mirrors in order, then the registry itself (or on
        ``endpoints``, ending with the registry).

        A mirror that cannot be reached, fails, or lacks the content is skipped; the last
        endpoint's failure is the error raised. Pushes go to the registry only.
        """
        endpoints = endpoints or endpoints_for(ref.registry, self.options)
        if push:
            endpoints = endpoints[-1:]
        base_params = dict(kwargs.pop("params", None) or {})
        for index, endpoint in enumerate(endpoints):
            last = index == len(endpoints) - 1
            params = dict(base_params)
            if endpoint.is_mirror:
                params["ns"] = endpoint.namespace
            url = f"{endpoint.base}/v2/{ref.repository}/{path}"
            try:
                response = self.send(method, url, ref=ref, endpoint=endpoint, push=push,
                                     params=params or None, **kwargs)
            except RegistryError as exc:
                if last:
                    raise
                log.warning("mirror %s failed (%s); trying the next host", endpoint.base, exc)
                continue
            if response.status_code in ok:
                return response, endpoint
            if last:
                raise self.error(response, what or f"{method} {ref.name} {path.split('/')[0]}")
            log.warning("mirror %s answered %d; trying the next host", endpoint.base, response.status_code)
            release(response)
        raise AssertionError("endpoints_for always returns the registry itself")

    def error(self, response: requests.Response, what: str) -> RegistryError:
        """The typed error for an unexpected answer (body read for the registry's message)."""
        status = response.status_code
        detail = self._registry_message(response)
        message = f"{what}: {status} {response.reason or ''}".rstrip() + (f" ({detail})" if detail else "")
        if status == 404:
            return NotFoundError(message)
        if status in (401, 403):
            return AuthError(message, status)
        return RegistryError(message, status)

    # ---- documents ----------------------------------------------------------------------

    def get_document(self, ref: Reference, path: str, accept: str | None, what: str,
                     expected_digest: str | None) -> tuple[bytes, requests.Response]:
        """GET a small document (manifest, config) and check its digest when one vouches for it."""
        headers = {"Accept": accept} if accept else {}
        response, _ = self.api("GET", ref, path, headers=headers, what=what)
        body = self.read_body(response, MAX_DOCUMENT_SIZE, what)
        served = response.headers.get("Docker-Content-Digest")
        for expected in filter(None, (expected_digest, served)):
            check_digest(body, expected, what)
        return body, response

    # ---- blobs --------------------------------------------------------------------------

    def blob_exists(self, ref: Reference, digest: str, *, push: bool = False) -> bool:
        response, _ = self.api("HEAD", ref, f"blobs/{digest}", push=push, ok=(200, 404),
                               what=f"HEAD blob {digest}", allow_redirects=True, stream=False)
        response.close()
        return response.status_code == 200

    def blob_size(self, ref: Reference, digest: str, tail: ByteRange | None = None) -> int:
        """``tail``: the blob's last bytes as the caller expects them (it knows the size from
        the manifest and reads them next): when the location is not known yet, the probe asks
        for them instead of one byte, so opening a layer costs one request less."""
        return self.locations.get(ref, digest, probe=tail or FIRST_BYTE).size

    def _blob_get(self, ref: Reference, digest: str, headers: dict[str, str],
                  ok: tuple[int, ...]) -> tuple[requests.Response, BlobLocation]:
        """GET at the blob's location; an expired redirect (403) is resolved again, once."""
        location = self.locations.get(ref, digest)
        for retry in (False, True):
            response = self.send("GET", location.url, ref=ref, endpoint=location.endpoint,
                                 authenticate=not location.redirected, headers=headers, allow_redirects=False)
            if response.status_code == 403 and location.redirected and not retry:
                release(response)
                log.info("redirected URL for %s refused (403); resolving it again", digest)
                location = self.locations.get(ref, digest, refresh=True)
                continue
            if response.status_code in ok:
                return response, location
            if 300 <= response.status_code < 400 and not retry:  # location moved: resolve again
                release(response)
                location = self.locations.get(ref, digest, refresh=True)
                continue
            break
        raise self.error(response, f"GET blob {digest} of {ref.name}")

    def read_ranges(self, ref: Reference, digest: str, ranges: list[ByteRange], *,
                    whole_body: WholeBlobSink | None = None) -> list[bytes]:
        """The bytes of each range, in the order given, fetched in as few requests as allowed.

        When the answer is the whole blob (200), the blob digest is checked before this
        returns; with ``whole_body``, that sink runs the stream instead and this returns as soon
        as the wanted ranges have passed (like a 206's bytes, they are then vouched for by the
        caller's chunk and TOC digests), the sink keeping the rest (workers/wholeblob.py)."""
        size = self.blob_size(ref, digest)
        for r in ranges:
            if r.offset < 0 or r.length < 0 or r.end > size:
                raise RegistryError(f"blob {digest}: range {r.offset}+{r.length} is outside its {size} bytes")
        if len(ranges) == 1 and (kept := self.locations.kept_tail(ref, digest, ranges[0])) is not None:
            return [kept]
        wanted = [r for r in ranges if r.length > 0]
        fetch = coalesce(wanted, self.options.coalesce_gap)
        if not fetch:
            return [b"" for _ in ranges]
        parts = self._fetch_parts(ref, digest, fetch, size, whole_body)
        got = iter(slice_parts(wanted, parts, f"blob {digest}"))
        return [next(got) if r.length > 0 else b"" for r in ranges]

    def _fetch_parts(self, ref: Reference, digest: str, fetch: list[ByteRange], size: int,
                     whole_body: WholeBlobSink | None = None) -> list[Part]:
        attempt = 0
        while True:
            location = self.locations.get(ref, digest)
            host = urlsplit(location.url).netloc
            with self._lock:
                single = host in self._single_range_hosts
            request = [ByteRange(fetch[0].offset, fetch[-1].end - fetch[0].offset)] if single else fetch
            if self.locations.wait_for_mirror(location, digest, sum(r.length for r in request)):
                continue
            try:
                response, location = self._blob_get(ref, digest, {"Range": range_header(request)}, (200, 206, 400))
                if response.status_code == 400:
                    response.close()
                    if len(request) == 1:
                        raise self.error(response, f"GET blob {digest} of {ref.name} (range)")
                    log.warning("%s refused a multi-range request; using single ranges from now on", host)
                    with self._lock:
                        self._single_range_hosts.add(host)
                    continue
                if response.status_code == 200 and location.endpoint.is_mirror:
                    self.locations.passed_over(response, location.endpoint, digest)
                    self.locations.get(ref, digest, refresh=True)
                    continue
                if response.status_code == 200:
                    return self._parts_from_full_body(response, digest, fetch, size, whole_body)
                if location.endpoint.is_mirror:
                    self.range_support.ranged(location.endpoint.host)
                return self._parts_from_partial(response, digest, request, size)
            except Transient as exc:
                self._after_broken_body(attempt, f"blob {digest}: {exc}")
                attempt += 1

    def _parts_from_partial(self, response: requests.Response, digest: str,
                            request: list[ByteRange], size: int) -> list[Part]:
        where = f"blob {digest}"
        wanted = sum(r.length for r in request)
        body = self.read_body(response, wanted + MULTIPART_SLACK_PER_PART * len(request) + 4096, where)
        boundary = multipart_boundary(response.headers.get("Content-Type"))
        if boundary is not None:
            return parse_multipart(body, boundary, size, where)
        # Single part; Content-Type may be missing (zot) - Content-Range says what it is.
        offset, length, total = parse_content_range(response.headers.get("Content-Range"), where)
        if total is not None and total != size:
            raise RegistryError(f"{where}: answer says the blob has {total} bytes, expected {size}")
        if len(body) != length:
            raise RegistryError(f"{where}: got {len(body)} bytes for a {length}-byte Content-Range")
        return [Part(offset, body)]

    def _parts_from_full_body(self, response: requests.Response, digest: str, fetch: list[ByteRange], size: int,
                              whole_body: WholeBlobSink | None) -> list[Part]:
        """A 200 to a ranged GET: stream the whole blob, verify it, cut out the wanted ranges
        (or let ``whole_body`` stream it). A body announced at another length than the blob's is
        refused unread: it cannot be the blob."""
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            response.close()
            raise RegistryError(f"blob {digest}: a ranged read was answered with a {declared}-byte body; "
                                f"the blob has {size} bytes", 200)
        buffers = [bytearray() for _ in fetch]

        def keep(offset: int, piece: bytes) -> None:
            for r, buf in zip(fetch, buffers):
                lo, hi = max(r.offset, offset), min(r.end, offset + len(piece))
                if lo < hi:
                    buf += piece[lo - offset : hi - offset]

        log.info("blob %s: registry ignored Range and sent the whole blob", digest)
        if whole_body is None:
            self.stream_verified(response, digest, size, keep, f"blob {digest}")
        else:
            def stream(sink: Callable[[int, bytes], None]) -> int:
                def both(offset: int, piece: bytes) -> None:
                    keep(offset, piece)
                    sink(offset, piece)
                return self.stream_verified(response, digest, size, both, f"blob {digest}")
            whole_body.run(stream, fetch[-1].end)
        return [Part(r.offset, bytes(buf)) for r, buf in zip(fetch, buffers)]

    def download_blob(self, ref: Reference, digest: str, out: BinaryIO,
                      progress: Progress | None = None) -> int:
        """Write the whole blob to ``out``, verified; on a digest mismatch ``out`` is truncated
        back to where it started, so nothing unverified is kept."""
        start = out.tell()
        attempt = 0
        while True:
            response, location = self._blob_get(ref, digest, {}, (200,))
            try:
                def keep(offset: int, piece: bytes) -> None:
                    out.write(piece)
                    if progress:
                        progress(len(piece))
                return self.stream_verified(response, digest, location.size, keep, f"blob {digest} of {ref.name}")
            except Transient as exc:
                out.seek(start)
                out.truncate()
                self._after_broken_body(attempt, f"blob {digest}: {exc}")
                attempt += 1
            except BaseException:
                out.seek(start)
                out.truncate()
                raise


    # ---- bodies -------------------------------------------------------------------------

    def _pieces(self, response: requests.Response, limit: int, what: str) -> Iterator[bytes]:
        return body_pieces(response, limit, what, self.options.request_timeout, self.options.min_rate)

    def read_body(self, response: requests.Response, limit: int, what: str) -> bytes:
        """The whole body, at most ``limit`` bytes, under the deadlines of transport.py; one
        shorter than its Content-Length is Transient (the connection broke)."""
        body = b"".join(self._pieces(response, limit, what))
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and len(body) != int(declared):
            raise Transient(f"body ended after {len(body)} of {declared} bytes")
        return body

    def stream_verified(self, response: requests.Response, digest: str, size: int,
                        keep: Callable[[int, bytes], None], what: str) -> int:
        """Stream a whole-blob body (never past ``size`` bytes) through ``keep`` while hashing;
        raise DigestMismatchError (after everything was passed on, so callers must treat what
        they kept as unverified until this returns) when the bytes are not the blob."""
        algorithm = digest.partition(":")[0]
        if algorithm not in ("sha256", "sha512"):
            raise RegistryError(f"{what}: unsupported digest algorithm {algorithm!r}")
        hasher = hashlib.new(algorithm)
        offset = 0
        for piece in self._pieces(response, size, what):
            hasher.update(piece)
            keep(offset, piece)
            offset += len(piece)
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if offset != size:
            raise Transient(f"body ended after {offset} of {size} bytes")
        if actual != digest:
            raise DigestMismatchError(what, digest, actual)
        return offset

    def _after_broken_body(self, attempt: int, reason: str) -> None:
        """Wait before fetching again after a body broke off, or raise when no retry is left."""
        delay = self._retry_delay(attempt)
        if delay is None:
            raise host_failure(f"{reason} (gave up after {attempt + 1} attempts)")
        log.info("%s; retrying", reason)
        self.backoff.sleep(delay)

    def _registry_message(self, response: requests.Response) -> str:
        """The registry's own error text (distribution's `errors` JSON), short and secret-free."""
        body = bytearray()
        try:
            for piece in self._pieces(response, MAX_DOCUMENT_SIZE, "error body"):
                body += piece
                if len(body) >= ERROR_BODY_PREFIX:
                    break
        except (RegistryError, Transient):
            pass
        finally:
            response.close()
        try:
            errors = json.loads(bytes(body[:ERROR_BODY_PREFIX])).get("errors") or []
            text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors[:3])
        except (ValueError, AttributeError, TypeError):
            return ""
        return text[:300]

def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(data: bytes, expected: str, what: str) -> None:
    algorithm, _, want = expected.partition(":")
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError(f"{what}: unsupported digest algorithm {algorithm!r}")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != want:
        raise DigestMismatchError(what, expected, f"{algorithm}:{actual}")
