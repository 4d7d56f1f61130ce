"""A mirror that answers ranged reads with the whole blob (a pull-through cache still filling):
passed over for a while, never read, asked again when its mark expires (issue 18).

The mirror is a FaultProxy in front of the test registry whose ``full_body`` rule plays the
cold cache; the origin is the registry itself. Time is a fake clock the recorded backoff
sleeps advance, so marks expire without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lazylayer.workers.registry import deadline
from lazylayer.workers.registry.client import RegistryClient
from lazylayer.workers.registry.hosts import RegistryOptions
from lazylayer.workers.registry.ranges import ByteRange
from lazylayer.workers.registry.rangesupport import FIRST_PAUSE, HostRanges, RangeSupport
from lazylayer.workers.registry.retry import Backoff
from lazylayer.workers.registry.stores import RegistryStore
from tests.support.faultproxy import Rule

WANTED = [ByteRange(100, 50), ByteRange(3_000_000, 1000)]


@dataclass
class FakeTime:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


def _client(registry, proxy, clock: FakeTime) -> RegistryClient:
    options = RegistryOptions(max_retries=2, mirrors={registry.host: (proxy.url,)})
    return RegistryClient(options, lambda registry: None, backoff=Backoff(0.001, 5.0, 2, sleep=clock.sleep),
                          range_support=RangeSupport(clock=clock))


def _mirror_gets(proxy) -> list:
    return [s for s in proxy.seen if "/blobs/" in s.path]


def test_cold_mirror_is_passed_over_unread_then_asked_again(registry, proxy, pushed, clock):
    client = _client(registry, proxy, clock)
    want = [pushed.blob[r.offset:r.end] for r in WANTED]
    proxy.add(Rule("full_body", times=None, ranged=True))
    assert client.read_ranges(pushed.ref, pushed.digest, WANTED) == want
    # one 1-byte GET reached the mirror (no HEAD: a cache fetches the whole blob for one)
    assert [(s.method, s.range, s.status) for s in _mirror_gets(proxy)] == [("GET", "bytes=0-0", 200)]
    assert client.range_support.snapshot() == [HostRanges(proxy.host, "full-body", 1, FIRST_PAUSE)]
    assert client.read_ranges(pushed.ref, pushed.digest, WANTED) == want
    assert len(_mirror_gets(proxy)) == 1  # while marked, the origin serves
    proxy.reset()  # the cache has the blob now
    clock.now += FIRST_PAUSE
    assert client.read_ranges(pushed.ref, pushed.digest, WANTED) == want
    assert [(s.range, s.status) for s in _mirror_gets(proxy)] == [("bytes=0-0", 206), ("bytes=100-149,3000000-3000999", 206)]
    assert client.range_support.snapshot() == [HostRanges(proxy.host, "ranged", 0, 0.0)]


def test_mirror_that_turns_cold_again_is_passed_over_and_marked_longer(registry, proxy, pushed, clock):
    client = _client(registry, proxy, clock)
    assert client.read_ranges(pushed.ref, pushed.digest, WANTED[:1]) == [pushed.blob[100:150]]
    proxy.add(Rule("full_body", times=None, ranged=True))  # evicted from the cache
    assert client.read_ranges(pushed.ref, pushed.digest, WANTED[1:]) == [pushed.blob[3_000_000:3_001_000]]
    assert [s.status for s in _mirror_gets(proxy)][-1:] == [200]  # then the origin served it
    clock.now += FIRST_PAUSE
    client.read_ranges(pushed.ref, pushed.digest, WANTED[:1])
    assert client.range_support.snapshot()[0].strikes == 2  # the next pause doubles


def test_reads_nobody_waits_for_wait_for_the_mirror(registry, proxy, pushed, clock):
    client = _client(registry, proxy, clock)
    proxy.add(Rule("full_body", times=1, ranged=True))  # the first probe only: then the cache has it
    with deadline.job_deadline(60), deadline.urgency(False):
        assert client.read_ranges(pushed.ref, pushed.digest, WANTED) == [pushed.blob[r.offset:r.end] for r in WANTED]
    assert clock.slept == [FIRST_PAUSE]  # waited for the mark to expire instead of asking the origin
    assert [(s.range, s.status) for s in _mirror_gets(proxy)][-1] == ("bytes=100-149,3000000-3000999", 206)


def test_a_destination_is_asked_for_its_blobs_without_the_mirror(registry, proxy, pushed, clock):
    """`convert` to a registry checks the destination's blobs with HEAD: never through a mirror,
    which would fetch a blob it lacks from the origin (twice, for docker-registry 2.8)."""
    store = RegistryStore(_client(registry, proxy, clock), pushed.ref)
    assert store.has_blob(pushed.digest)
    assert not store.has_blob("sha256:" + "2" * 64)
    assert proxy.seen == []


def test_a_mirror_that_never_serves_ranges_is_not_waited_for_forever(registry, proxy, pushed, clock):
    client = _client(registry, proxy, clock)
    proxy.add(Rule("full_body", times=None, ranged=True))  # ignores Range for good (not a filling cache)
    with deadline.job_deadline(3600), deadline.urgency(False):
        assert client.read_ranges(pushed.ref, pushed.digest, WANTED) == [pushed.blob[r.offset:r.end] for r in WANTED]
    assert clock.slept == [2.0, 4.0, 8.0, 16.0, 32.0]  # asked again after each pause, then read beside it
    assert client.range_support.gave_up(proxy.host)
