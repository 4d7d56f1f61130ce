from __future__ import annotations

import pytest

from lazylayer.shared.errors import RegistryError
from lazylayer.workers.registry.ranges import (
    ByteRange, coalesce, multipart_boundary, parse_content_range, parse_multipart, range_header,
    slice_parts,
)

BLOB = bytes(range(256)) * 4


def multipart(parts, boundary="XyZ", total=len(BLOB), tamper=None):
    out = b"preamble\r\n"
    for first, last in parts:
        body = BLOB[first : last + 1]
        if tamper:
            body = tamper(body)
        out += (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {first}-{last}/{total}\r\n\r\n").encode() + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_coalesce_merges_overlapping_and_adjacent_only():
    got = coalesce([ByteRange(10, 5), ByteRange(0, 10), ByteRange(30, 5), ByteRange(12, 1), ByteRange(40, 0)])
    assert got == [ByteRange(0, 15), ByteRange(30, 5)]
    assert coalesce([ByteRange(0, 10), ByteRange(14, 1)], gap=4) == [ByteRange(0, 15)]
    assert range_header(got) == "bytes=0-14,30-34"


def test_content_range():
    assert parse_content_range("bytes 5-9/100", "x") == (5, 5, 100)
    assert parse_content_range("bytes 0-0/*", "x") == (0, 1, None)
    for bad in (None, "", "bytes 9-5/100", "bytes 5-100/100", "items 1-2/3"):
        with pytest.raises(RegistryError):
            parse_content_range(bad, "x")


def test_boundary():
    assert multipart_boundary('multipart/byteranges; boundary="a b"') == "a b"
    assert multipart_boundary("multipart/byteranges; boundary=3d6b6a416f9b5") == "3d6b6a416f9b5"
    assert multipart_boundary("application/octet-stream") is None
    assert multipart_boundary(None) is None


def test_multipart_round_trip():
    body = multipart([(0, 9), (100, 355), (1000, 1023)], boundary="--XyZ")
    parts = parse_multipart(body, "--XyZ", len(BLOB), "t")
    assert [(p.offset, bytes(p.data)) for p in parts] == [
        (0, BLOB[:10]), (100, BLOB[100:356]), (1000, BLOB[1000:])]
    wanted = [ByteRange(101, 3), ByteRange(2, 2), ByteRange(1000, 24)]
    assert slice_parts(wanted, parts, "t") == [BLOB[101:104], BLOB[2:4], BLOB[1000:1024]]


def test_part_data_containing_the_delimiter_is_framed_by_content_range():
    sneaky = lambda b: (b"\r\n--XyZ\r\nContent-Range: bytes 0-1/1024\r\n\r\n" + b)[: len(b)]
    parts = parse_multipart(multipart([(0, 99), (200, 299)], tamper=sneaky), "XyZ", len(BLOB), "t")
    assert [(p.offset, bytes(p.data)) for p in parts] == [(0, sneaky(BLOB[:100])), (200, sneaky(BLOB[200:300]))]


@pytest.mark.parametrize("body, message", [
    (multipart([(0, 9)], total=999), "blob has 999"),
    (multipart([(0, 9)], tamper=lambda b: b + b"extra"), "longer than its Content-Range"),
    (multipart([(0, 9)], tamper=lambda b: b[:5]), "longer than its Content-Range"),
    (multipart([(0, 9)]).replace(b"Content-Range", b"X-Range"), "Content-Range"),
    (b"--XyZ--\r\n", "no parts"),
    (b"no boundary at all", "without its boundary"),
    (multipart([(0, 99)])[:150], "truncated"),
])
def test_multipart_refuses_malformed_bodies(body, message):
    with pytest.raises(RegistryError, match=message):
        parse_multipart(body, "XyZ", len(BLOB), "t")


def test_missing_coverage_is_an_error():
    parts = parse_multipart(multipart([(0, 9)]), "XyZ", len(BLOB), "t")
    with pytest.raises(RegistryError, match="does not cover"):
        slice_parts([ByteRange(5, 10)], parts, "t")
