"""The two TOC decoders agree: a small TOC decoded whole in C (`toc.decode_entries`, msgspec) and
the same TOC streamed entry by entry (`toc.entry_from_json`) give the same entries, or the same
refusal. The fast one must never accept what the precise one refuses (a null, a bool, a float,
a bound, bad base64, a bad time): it only hands those back for the precise one to name."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.estargz import tocstream
from lazylayer.shared.estargz.fields import DEV_MAJOR_MAX, INT64_MAX, UINT32_MAX
from lazylayer.shared.estargz.toc import TOCLimits
from lazylayer.shared.estargz.tocstream import TOCStream

_ODD = [None, True, False, -1, 1.0, 1.5, "7", [], {}, INT64_MAX + 1, UINT32_MAX + 1, DEV_MAJOR_MAX + 1]
_INTS = st.one_of(st.integers(0, 5000), st.sampled_from([0, INT64_MAX, UINT32_MAX, DEV_MAJOR_MAX, 0o100644]))
_NAMES = st.sampled_from(["a", "a", "b/c", "./a/", "/a/b", "a//b", "a/./b", "a/../b", "../x", "a\x00b", "d/", "é", "", "."])
_FIELDS = {
    "name": _NAMES, "type": st.sampled_from(["reg", "dir", "symlink", "hardlink", "char", "fifo", "chunk", "bogus"]),
    "size": _INTS, "mode": _INTS, "uid": _INTS, "gid": _INTS, "devMajor": _INTS, "devMinor": _INTS,
    "offset": _INTS, "chunkOffset": _INTS, "chunkSize": _INTS, "innerOffset": _INTS,
    "linkName": _NAMES, "userName": st.text(max_size=3), "groupName": st.text(max_size=3),
    "digest": st.sampled_from(["", "sha256:" + "a" * 64]), "chunkDigest": st.sampled_from(["", "sha256:" + "a" * 64]),
    "modtime": st.sampled_from(["", "2024-05-01T10:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                                "2024-05-01T10:00:00+02:00", "yesterday", "2024-13-01T00:00:00Z"]),
    "xattrs": st.sampled_from([{}, {"user.a": "eA=="}, {"user.a": "!!"}, {"user.a": 5}]),
    "unknown": st.integers(),
}


@st.composite
def entries(draw) -> dict:
    entry = {}
    for key in draw(st.lists(st.sampled_from(sorted(_FIELDS)), unique=True, max_size=8)) + ["name", "type"]:
        odd = draw(st.integers(0, 9)) == 0
        entry[key] = draw(st.sampled_from(_ODD)) if odd else draw(_FIELDS[key])
    return entry


def outcome(document: bytes, whole: bool, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tocstream, "WHOLE_DOCUMENT", 8 << 20 if whole else 0)
    try:
        return list(TOCStream([document], payload_end=1 << 62, limits=TOCLimits(max_entries=50)))
    except LazyLayerError as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(entries(), max_size=4))
def test_whole_and_streamed_decoding_agree(monkeypatch, raw_entries):
    document = json.dumps({"version": 1, "entries": raw_entries}).encode()
    assert outcome(document, True, monkeypatch) == outcome(document, False, monkeypatch)


_BASE = {"name": "d/f", "type": "reg", "size": 3, "offset": 10, "digest": "sha256:" + "a" * 64,
         "chunkDigest": "sha256:" + "a" * 64}


@pytest.mark.parametrize("key", sorted(set(_FIELDS) - {"unknown"}))
def test_every_odd_value_of_every_field_gets_one_verdict(monkeypatch, key):
    """Each field of a valid entry set to each odd value: one verdict from both decoders."""
    for value in [*_ODD, -(1 << 70), 1 << 70, "\ud800", {"user.a": None}]:
        document = json.dumps({"version": 1, "entries": [{**_BASE, key: value}]}).encode()
        assert outcome(document, True, monkeypatch) == outcome(document, False, monkeypatch), (key, value)


def test_the_fast_decoder_takes_a_plain_toc():
    """Not vacuous: a well-formed TOC really is decoded whole (no fallback to the stream)."""
    document = json.dumps({"version": 1, "entries": [
        {"name": "./d/", "type": "dir", "mode": 0o40755, "modtime": "2024-05-01T10:00:00Z"},
        {"name": "d/f", "type": "reg", "size": 3, "xattrs": {"user.a": "eA=="}, "digest": "sha256:" + "a" * 64,
         "chunkDigest": "sha256:" + "a" * 64, "offset": 10}]}).encode()
    entries = tocstream._whole_document(document)
    assert entries is not None and [e.name for e in map(tocstream.settled, entries)] == ["d", "d/f"]
    assert entries[0].mode == 0o755 and entries[0].mtime == 1714557600 and entries[1].xattrs == {"user.a": b"x"}
    assert entries[1].chunk_digest is entries[1].digest


@pytest.mark.parametrize("raw", [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"])
def test_invalid_utf8_gets_one_verdict(monkeypatch, raw):
    """msgspec reads the TOC's bytes itself (no str copy first): invalid UTF-8 in a name, an
    overlong form, an encoded surrogate, past U+10FFFF or cut short, is the stream's to refuse."""
    document = b'{"version": 1, "entries": [{"name": "a' + raw + b'", "type": "dir"}]}'
    assert tocstream._whole_document(document) is None
    verdict = outcome(document, True, monkeypatch)
    assert verdict == outcome(document, False, monkeypatch) and verdict[0] == "TOCError"


@pytest.mark.parametrize("field,value", [("name", "a\udcff"), ("linkName", "\udcff"), ("userName", "\ud800x"),
                                         ("groupName", "g\udfff"), ("xattrs", {"user.\udc80": "eA=="})])
def test_a_lone_surrogate_escape_is_refused_by_both_decoders(monkeypatch, field, value):
    """``"\\udcff"`` is valid JSON but no text: msgspec refuses it, and the stream must too (a
    symlink target holding one used to fail registration with a bare UnicodeEncodeError)."""
    entry = {"name": "l", "type": "symlink", "linkName": "t", field: value}
    document = json.dumps({"version": 1, "entries": [entry]}).encode()
    assert b"\\ud" in document  # json.dumps escapes it, as a hostile writer would
    verdict = outcome(document, True, monkeypatch)
    assert verdict == outcome(document, False, monkeypatch)
    assert verdict[0] == "TOCError" and "lone UTF-16 surrogate" in verdict[1]
