"""The knobs the front's fetching follows (daemon/remote.py), read once from the config file.

Apart from `Remote` so that what a deployment tunes is one short file to read, and so the
fetching code is not also the config's map."""

from __future__ import annotations

from dataclasses import dataclass

from lazylayer.shared.config import Config


@dataclass(frozen=True)
class FetchSettings:
    """The knobs fetching follows; `from_config` maps them from the config file."""

    #: one job, queueing and re-dispatch included [s]
    request_timeout: float = 60.0
    #: one layer resolve: TOC fetch, check and registration [s]
    resolve_timeout: float = 300.0
    #: refuse layers whose descriptor lacks the TOC digest annotation
    require_toc_digest: bool = True
    #: accept layers without a TOC digest, and legacy chunks without digests
    allow_unverified: bool = False
    #: compressed bytes to prefetch for layers without landmarks (0: none) [bytes]
    prefetch_size: int = 0
    #: compressed bytes per background fetch job [bytes]
    piece_size: int = 8 << 20
    #: chunks `read_ahead` fetches ahead of a sequential reader [chunks]
    read_ahead_chunks: int = 2
    #: compressed bytes after a missed chunk fetched in the same job [bytes]
    neighbour_window: int = 256 << 10
    #: compressed bytes past ``neighbour_window`` whose files' first chunks a side job fetches [bytes]
    neighbour_ahead: int = 4 << 20
    #: compressed bytes before a miss whose files' first chunks the side job fetches too [bytes]
    neighbour_behind: int = 1 << 20
    #: background pieces in flight at once, over all layers [requests]
    background_concurrency: int = 2
    #: average rate the background walk may fetch at; 0 = no cap [bytes/s]
    bandwidth_limit: int = 0

    @classmethod
    def from_config(cls, config: Config) -> "FetchSettings":
        return cls(
            request_timeout=config.workers.request_timeout,
            resolve_timeout=config.workers.resolve_timeout,
            require_toc_digest=config.verification.require_toc_digest,
            allow_unverified=config.verification.allow_unverified,
            prefetch_size=config.prefetch.size,
            piece_size=config.background.piece_size,
            read_ahead_chunks=config.fuse.read_ahead_chunks,
            neighbour_window=config.fuse.neighbour_window,
            neighbour_ahead=config.fuse.neighbour_ahead,
            neighbour_behind=config.fuse.neighbour_behind,
            background_concurrency=config.background.concurrency,
            bandwidth_limit=config.background.bandwidth_limit,
        )
