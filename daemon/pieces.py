"""Cutting a blob into pieces for the jobs that walk it (background fetch, prefetch).

A piece is a compressed byte range cut only where no chunk's compressed range spans the cut, so
each job fetches whole chunks and can check every one it stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lazylayer.shared.store.metadata import FileChunk


@dataclass(frozen=True)
class Piece:
    """One background fetch job: compressed ``[start, end)`` and the chunks lying inside it."""

    start: int
    end: int
    chunks: tuple[FileChunk, ...]


def plan_pieces(chunks: Sequence[FileChunk], blob_size: int, piece_size: int) -> list[Piece]:
    """Cut ``[0, blob_size)`` into consecutive pieces of about ``piece_size`` bytes, only where no
    chunk's compressed range spans the cut, each with the chunks that lie inside it."""
    pieces: list[Piece] = []
    start = reach = 0
    members: list[FileChunk] = []

    def cut_before(limit: int) -> None:
        # No chunk spans [reach, limit]: any cut in there is legal.
        nonlocal start, members
        while limit - start > piece_size:
            cut = max(reach, start + piece_size)
            if cut > limit:
                return
            pieces.append(Piece(start, cut, tuple(members)))
            start, members = cut, []

    for chunk in sorted(chunks, key=lambda c: (c.blob_offset, c.inner_offset)):
        if chunk.blob_offset >= reach:
            cut_before(chunk.blob_offset)
        members.append(chunk)
        reach = max(reach, chunk.blob_end)
    cut_before(blob_size)
    if start < blob_size:
        pieces.append(Piece(start, blob_size, tuple(members)))
    return pieces
