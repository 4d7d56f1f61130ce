"""The chunk inflater: ISA-L when installed (a dependency), byte-identical to zlib, and corrupt
input still refused as before."""

from __future__ import annotations

import gzip
import hashlib
import random

import pytest

from lazylayer.shared.errors import DigestMismatchError, FormatError
from lazylayer.shared.estargz import inflate
from lazylayer.shared.estargz.reader import decompress_chunk
from lazylayer.shared.estargz.toc import Chunk


def test_isal_is_the_inflater():
    assert inflate.IMPLEMENTATION == "isal"


@pytest.mark.parametrize("size", [1, 4096, 3 << 20])
def test_members_inflate_exactly_and_corruption_is_refused(size: int):
    rng = random.Random(size)
    data = bytes(rng.choice(b"abcdefgh \n") for _ in range(size))
    member = gzip.compress(data + b"the next tar header", 6)
    chunk = Chunk(0, size, 0, 0, len(member), "sha256:" + hashlib.sha256(data).hexdigest())
    assert decompress_chunk("gzip", member, chunk) == data
    broken = bytearray(member)
    broken[10] ^= 0xFF  # the first byte of the deflate stream
    with pytest.raises((FormatError, DigestMismatchError)):
        decompress_chunk("gzip", bytes(broken), chunk)
