from __future__ import annotations

import pytest

from lazylayer.shared.errors import NotEStargzError
from lazylayer.shared.estargz.footer import (
    ESTARGZ_FOOTER_SIZE, MAX_FOOTER_SIZE, FooterKind, estargz_footer, parse_footer,
    zstd_chunked_footer,
)
from tests.conftest import FIXTURE_TAGS, fixture_facts


@pytest.mark.parametrize("tag", FIXTURE_TAGS)
def test_upstream_footers(fixtures_dir, tag):
    facts = fixture_facts(fixtures_dir, tag)
    blob = (fixtures_dir / facts["blob"]).read_bytes()
    footer = parse_footer(blob[-MAX_FOOTER_SIZE:], len(blob))
    assert footer.kind.value == facts["footer"]["kind"]
    assert footer.toc_offset == facts["toc"]["offset"]
    assert footer.toc_size == facts["toc"]["compressed_size"]
    assert bytes.fromhex(facts["footer"]["hex"]) == blob[-footer.size:]
    if footer.kind is FooterKind.ESTARGZ:
        assert estargz_footer(footer.toc_offset) == blob[-ESTARGZ_FOOTER_SIZE:]


def test_legacy_footer_is_recognised():
    legacy = estargz_footer(100)[:10] + b"\x16\x00" + b"%016xSTARGZ" % 100 + b"\x01\x00\x00\xff\xff" + bytes(8)
    footer = parse_footer(b"x" * 4 + legacy, 200)
    assert (footer.kind, footer.toc_offset, footer.toc_size) == (FooterKind.LEGACY, 100, 200 - 100 - 47)


def test_zstd_footer_roundtrip():
    raw = zstd_chunked_footer(1000, 50, 400)
    footer = parse_footer(raw, 1000 + 50 + len(raw))
    assert (footer.kind, footer.toc_offset, footer.toc_size, footer.toc_json_size) == (
        FooterKind.ZSTD_CHUNKED, 1000, 50, 400)


@pytest.mark.parametrize("tail,size", [(b"", 0), (b"hello world" * 10, 110), (bytes(51), 51)])
def test_not_estargz(tail, size):
    with pytest.raises(NotEStargzError, match="not an eStargz"):
        parse_footer(tail, size)


def test_offset_outside_blob():
    with pytest.raises(NotEStargzError, match="outside"):
        parse_footer(estargz_footer(10_000), 60)
