"""Bodies that stall, trickle or never end (issue 15 item 1), through the fault proxy in front of a
real registry: each read fails on its own, within its limit, with a message that says which."""

from __future__ import annotations

import re
import time

import pytest

from lazylayer.shared.errors import RegistryError
from lazylayer.workers.registry.deadline import job_deadline
from lazylayer.workers.registry.hosts import RegistryOptions
from tests.registry.helpers import make_client
from tests.registry.test_faults import WANTED, expected
from tests.support.faultproxy import Rule

#: scheduling slack on top of a limit
SLACK = 1.5



def _client(pushed, proxy, **options):
    client = make_client(RegistryOptions(**{"request_timeout": 1.0, "max_retries": 3, **options}))
    client.blob_size(pushed.at(proxy.host), pushed.digest)  # the location probe, before the fault
    return client


def _ranged(proxy):
    return [s for s in proxy.seen if s.range and s.range != "bytes=0-0"]


def _read_fails(client, pushed, proxy, pattern: str, within: float) -> None:
    started = time.monotonic()
    with pytest.raises(RegistryError, match=pattern):
        client.read_ranges(pushed.at(proxy.host), pushed.digest, WANTED)
    assert time.monotonic() - started < within
    assert len(_ranged(proxy)) == 1  # cut off, not fetched again


def test_stalled_body_is_cut_off_after_the_idle_timeout(proxy, pushed):
    client = _client(pushed, proxy)
    proxy.add(Rule("stall", ranged=True, after=100))
    _read_fails(client, pushed, proxy, r"the body stalled: no byte for 1 s after 100 bytes; cut off", 1 + SLACK)


def test_trickling_body_is_cut_off_at_the_job_deadline(proxy, pushed):
    client = _client(pushed, proxy)
    proxy.add(Rule("trickle", ranged=True, interval=0.1))
    with job_deadline(2.0):
        _read_fails(client, pushed, proxy, r"not complete after \d+ bytes at the request's deadline; cut off", 2 + SLACK)


def test_trickling_body_outside_a_job_is_cut_off_by_min_rate(proxy, pushed):
    # about 2.6 KB wanted + multipart slack: at 4 KB/s the whole body gets 1 s + ~2 s
    client = _client(pushed, proxy, min_rate=4096)
    proxy.add(Rule("trickle", ranged=True, interval=0.1))
    _read_fails(client, pushed, proxy, r"not complete after \d+ bytes at the [\d.]+ s allowed for the whole body; cut off", 4 + SLACK)


def test_endless_200_to_a_small_range_is_cut_off_at_the_blob_size(proxy, pushed):
    client = _client(pushed, proxy)
    proxy.add(Rule("endless", ranged=True))
    _read_fails(client, pushed, proxy, rf"the body goes on past the {len(pushed.blob)} bytes it can have; cut off",
                SLACK)


def test_recovers_once_the_registry_is_fixed(proxy, pushed):
    client = _client(pushed, proxy)
    proxy.add(Rule("stall", ranged=True, times=None))
    with pytest.raises(RegistryError, match="stalled"):
        client.read_ranges(pushed.at(proxy.host), pushed.digest, WANTED)
    proxy.release()
    assert client.read_ranges(pushed.at(proxy.host), pushed.digest, WANTED) == expected(pushed)


def test_timed_out_headers_respect_the_job_deadline(proxy, pushed):
    """request_timeout 30 s, but the job has 1 s left: the wait is clipped to the job."""
    client = _client(pushed, proxy, request_timeout=30.0)
    proxy.add(Rule("hang", ranged=True))
    with job_deadline(1.0):
        _read_fails(client, pushed, proxy, re.escape(proxy.host) + r" accepted the connection but sent no answer "
                                           r"within 1 s", 1 + SLACK)
