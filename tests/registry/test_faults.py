"""Registry misbehaviour, injected by tests/support/faultproxy in front of a real registry."""

from __future__ import annotations

import io
import re
import time

import pytest

from lazylayer.shared.errors import DigestMismatchError, NotFoundError, RegistryError
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.manifests import fetch_config, resolve_manifest
from lazylayer.workers.registry.ranges import ByteRange
from lazylayer.workers.registry.reference import parse_reference
from tests.registry.helpers import SleepRecorder, make_client
from tests.support.faultproxy import Rule
from tests.support.registry import free_port

WANTED = [ByteRange(100, 50), ByteRange(3_000_000, 1000), ByteRange(5_311_000, 515)]



@pytest.fixture
def sleeper():
    return SleepRecorder()


def expected(pushed, wanted=WANTED):
    return [pushed.blob[r.offset : r.end] for r in wanted]


def test_multi_range_goes_out_as_one_request(proxy, pushed):
    client = make_client()
    ref = pushed.at(proxy.host)
    assert client.read_ranges(ref, pushed.digest, WANTED) == expected(pushed)
    ranged = [s for s in proxy.seen if s.range and s.range != "bytes=0-0"]
    assert [(s.range, s.status) for s in ranged] == [("bytes=100-149,3000000-3000999,5311000-5311514", 206)]


def test_500_twice_then_success(proxy, pushed, sleeper):
    proxy.add(Rule("status", times=2, status=500, ranged=True))
    client = make_client(sleeper=sleeper)
    assert client.read_ranges(pushed.at(proxy.host), pushed.digest, WANTED) == expected(pushed)
    assert len(sleeper.delays) == 2 and sleeper.delays[0] < sleeper.delays[1]


def test_retries_are_bounded_and_501_is_not_retried(proxy, pushed, sleeper):
    proxy.add(Rule("status", times=None, status=503, method=None, path="/manifests/"))
    with pytest.raises(RegistryError) as caught:
        resolve_manifest(make_client(retries=3, sleeper=sleeper), pushed.at(proxy.host))
    assert caught.value.status == 503 and len(sleeper.delays) == 3
    proxy.reset()
    proxy.add(Rule("status", times=None, status=501, method=None, path="/manifests/"))
    sleeper.delays.clear()
    with pytest.raises(RegistryError) as caught:
        resolve_manifest(make_client(sleeper=sleeper), pushed.at(proxy.host))
    assert caught.value.status == 501 and sleeper.delays == []


def test_429_honours_retry_after(proxy, pushed, sleeper):
    proxy.add(Rule("status", times=1, status=429, headers={"Retry-After": "2"}, method=None, path="/manifests/"))
    manifest, _ = resolve_manifest(make_client(sleeper=sleeper), pushed.at(proxy.host))
    assert manifest.digest == pushed.manifest_digest
    assert sleeper.delays == [2.0]


def test_connection_refused_is_retried_then_reported_as_a_sentence(pushed, sleeper):
    port = free_port()
    ref = parse_reference(f"127.0.0.1:{port}/{pushed.ref.repository}:esgz")
    with pytest.raises(RegistryError) as caught:
        resolve_manifest(make_client(retries=2, sleeper=sleeper), ref)
    assert caught.value.status is None and len(sleeper.delays) == 2
    message = str(caught.value)
    assert re.fullmatch(rf"GET http://127\.0\.0\.1:{port}/v2/\S+/manifests/esgz: cannot connect to "
                        rf"127\.0\.0\.1:{port}: connection refused \(gave up after 3 attempts in [\d.]+ s\)",
                        message), message
    assert not re.search(r"Error\(|object at|HTTPConnection|Max retries", message)


def test_unknown_host_name_is_a_sentence():
    ref = parse_reference("no-such-registry.invalid:5000/app:v1")
    with pytest.raises(RegistryError) as caught:
        resolve_manifest(make_client(retries=0), ref)
    assert re.search(r": cannot resolve the host name no-such-registry\.invalid \(gave up after 1 attempt in ",
                     str(caught.value)), str(caught.value)


def test_hung_registry_is_one_attempt_within_the_timeout(proxy, pushed, sleeper):
    """A registry that accepts and never answers: one request, not retried, cut at request_timeout."""
    proxy.add(Rule("hang", method=None, path="/manifests/"))
    client = make_client(RegistryOptions(request_timeout=1.0, max_retries=3), sleeper=sleeper)
    started = time.monotonic()
    with pytest.raises(RegistryError, match=rf"{re.escape(proxy.host)} accepted the connection but sent no "
                                            r"answer within 1 s \(gave up after 1 attempt in"):
        resolve_manifest(client, pushed.at(proxy.host))
    assert time.monotonic() - started < 3
    assert len([s for s in proxy.seen if "/manifests/" in s.path]) == 1 and sleeper.delays == []


def test_mirrors_in_order_with_fallback_to_origin(proxy, pushed, registry, sleeper):
    dead = f"127.0.0.1:{free_port()}"
    options = RegistryOptions(max_retries=1, mirrors={registry.host: (dead, proxy.url)})
    client = make_client(options, sleeper=sleeper)
    manifest, _ = resolve_manifest(client, pushed.ref)
    assert client.read_ranges(pushed.ref, pushed.digest, WANTED) == expected(pushed)
    assert proxy.seen and all("ns=" in s.path for s in proxy.seen)  # served by the live mirror
    proxy.reset()
    proxy.add(Rule("status", times=None, status=404, method=None, path="/manifests/"))
    assert resolve_manifest(make_client(options, sleeper=sleeper), pushed.ref)[0].digest == manifest.digest


def test_200_full_body_for_a_ranged_request(proxy, pushed):
    client = make_client()
    client.blob_size(pushed.at(proxy.host), pushed.digest)  # location probe done before the fault
    proxy.add(Rule("full_body", times=1, ranged=True))
    assert client.read_ranges(pushed.at(proxy.host), pushed.digest, WANTED) == expected(pushed)
    assert [s.status for s in proxy.seen if s.range and s.range != "bytes=0-0"] == [200]


def test_200_full_body_that_is_corrupt_is_refused(proxy, pushed):
    proxy.add(Rule("full_body", times=None, ranged=True, corrupt=True))
    with pytest.raises(DigestMismatchError):
        make_client().read_ranges(pushed.at(proxy.host), pushed.digest, WANTED)


def test_400_on_multi_range_switches_the_host_to_single_range(proxy, pushed):
    proxy.add(Rule("reject_multirange", times=None))
    client = make_client()
    ref = pushed.at(proxy.host)
    assert client.read_ranges(ref, pushed.digest, WANTED) == expected(pushed)
    assert client.read_ranges(ref, pushed.digest, WANTED[:2]) == expected(pushed, WANTED[:2])
    statuses = [(s.status, "," in s.range) for s in proxy.seen if s.range and s.range != "bytes=0-0"]
    assert statuses == [(400, True), (206, False), (206, False)]  # multi-range asked once only


def test_206_without_content_type(proxy, pushed):
    proxy.add(Rule("strip_content_type", times=None, ranged=True))
    client = make_client()
    assert client.read_ranges(pushed.at(proxy.host), pushed.digest, WANTED[:1]) == expected(pushed, WANTED[:1])


def test_truncated_body_is_retried(proxy, pushed, sleeper):
    client = make_client(sleeper=sleeper)
    client.blob_size(pushed.at(proxy.host), pushed.digest)
    proxy.add(Rule("truncate", times=1, ranged=True))
    assert client.read_ranges(pushed.at(proxy.host), pushed.digest, WANTED) == expected(pushed)
    assert len(sleeper.delays) == 1


def test_corrupt_download_keeps_nothing(proxy, pushed):
    proxy.add(Rule("corrupt", times=None, ranged=False))
    out = io.BytesIO(b"previous")
    out.seek(0, io.SEEK_END)
    with pytest.raises(DigestMismatchError, match=pushed.digest):
        make_client().download_blob(pushed.at(proxy.host), pushed.digest, out)
    assert out.getvalue() == b"previous"


def test_corrupt_manifest_and_config_are_refused(proxy, pushed):
    ref = pushed.at(proxy.host)
    client = make_client()
    manifest, _ = resolve_manifest(client, ref)
    proxy.add(Rule("corrupt", times=None, method="GET", path="/manifests/"))
    with pytest.raises(DigestMismatchError):
        resolve_manifest(make_client(), ref)
    proxy.reset()
    proxy.add(Rule("corrupt", times=None, method="GET", path=manifest.config.digest))
    with pytest.raises(DigestMismatchError):
        fetch_config(client, ref, manifest)


def test_redirect_resolved_once_and_again_after_expiry(proxy, pushed):
    proxy.redirect_blobs = True
    client = make_client()
    ref = pushed.at(proxy.host)
    for _ in range(3):
        assert client.read_ranges(ref, pushed.digest, WANTED) == expected(pushed)
    assert sum(s.status == 307 for s in proxy.seen) == 1
    proxy.expire_redirects()
    assert client.read_ranges(ref, pushed.digest, WANTED) == expected(pushed)
    assert sum(s.status == 307 for s in proxy.seen) == 2
    assert [s.status for s in proxy.seen if s.path.startswith("/_storage/")][-4:] == [206, 403, 206, 206]


def test_unknown_blob_through_proxy_is_not_found(proxy, pushed):
    with pytest.raises(NotFoundError):
        make_client().read_ranges(pushed.at(proxy.host), "sha256:" + "2" * 64, WANTED[:1])


def test_small_answers_keep_the_connection(proxy, pushed):
    """The 1-byte location probe, a 401-free retry status and a mirror's refusal are small
    answers closed unread: urllib3 then drops the connection and the next request pays a new
    TCP (and, on a real registry, TLS) handshake. Read first, one connection carries them all."""
    proxy.add(Rule("status", times=1, status=503, ranged=True))
    client = make_client(sleeper=SleepRecorder())
    ref = pushed.at(proxy.host)
    for _ in range(2):
        client.locations.clear()  # resolve the location (the 1-byte probe) again
        assert client.read_ranges(ref, pushed.digest, WANTED) == expected(pushed)
    probes = [s.status for s in proxy.seen if s.range == "bytes=0-0"]
    assert probes == [503, 206, 206]
    assert proxy.connections == 1


def _blob_gets(proxy) -> list[tuple[str | None, int]]:
    return [(s.range, s.status) for s in proxy.seen if s.method == "GET" and "/blobs/" in s.path]


@pytest.mark.parametrize("redirected", [False, True])
def test_a_tail_probe_brings_the_tail_along_for_one_read(proxy, pushed, redirected):
    """Opening a layer probes its blob and then reads its tail: asked for in the probe itself,
    the tail costs no request of its own, through a redirect too. It is kept for one read."""
    proxy.redirect_blobs = redirected
    client = make_client()
    ref, size = pushed.at(proxy.host), len(pushed.blob)
    tail = ByteRange(size - 65536, 65536)
    assert client.blob_size(ref, pushed.digest, tail) == size
    probe = f"bytes={size - 65536}-{size - 1}"
    assert [(r, s) for r, s in _blob_gets(proxy) if s != 307] == [(probe, 206)]
    assert client.read_ranges(ref, pushed.digest, [tail]) == [pushed.blob[-65536:]]
    assert len(_blob_gets(proxy)) == (2 if redirected else 1)  # served from the probe
    assert client.read_ranges(ref, pushed.digest, [tail]) == [pushed.blob[-65536:]]
    assert _blob_gets(proxy)[-1] == (probe, 206)  # once: the next read asks


def test_a_tail_probe_of_a_blob_of_another_size_keeps_nothing(proxy, pushed):
    """The caller's tail comes from the manifest's size: a blob that is smaller (416 for a tail
    past its end, or a shorter answer) or larger is probed as usual and reports its real size,
    which the caller then refuses (workers/sources/handlers.py `choose`)."""
    size = len(pushed.blob)
    for expected_size in (size + 100_000, size + 10, size - 10):
        client = make_client()
        ref = pushed.at(proxy.host)
        proxy.reset()
        tail = ByteRange(expected_size - 65536, 65536)
        assert client.blob_size(ref, pushed.digest, tail) == size
        client.read_ranges(ref, pushed.digest, [ByteRange(size - 100, 100)])
        gets = _blob_gets(proxy)
        assert gets[-1] == (f"bytes={size - 100}-{size - 1}", 206), gets  # nothing kept was served
        if expected_size > size + 65536:
            assert [s for _, s in gets[:2]] == [416, 206] and gets[1][0] == "bytes=0-0"
