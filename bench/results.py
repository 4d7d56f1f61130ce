"""What a benchmark run produces: one row per comparison, one sample per run on each side.

Every row compares a lazylayer figure with a baseline figure of the same unit; the ratio is
lazylayer ÷ baseline, so for times and latencies 1.0 means "as fast as the baseline" and 3.0
"three times slower". Rows of items 8 to 10 compare with the Go stargz-store instead (the peer,
``go`` samples, ``go_ratio`` = lazylayer ÷ Go); a row may have either baseline or both. Medians
over runs are what tables show; JSON keeps every sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.measure import median

ITEMS = {
    1: "time to first byte: lazy mount vs full pull",
    2: "cold sequential read vs the physical limit",
    3: "warm re-read (page cache) vs local disk",
    4: "warm read from the LMDB cache (page cache dropped) vs local disk (dropped)",
    5: "find + stat of the whole tree vs local disk",
    6: "cold throughput by worker count",
    7: "random 4 KiB reads: latency",
    8: "cold start of a Python app (numpy, pandas, rich) from the layer store vs the Go stargz-store",
    9: "layer store operations vs the Go stargz-store",
    10: "containerd: ctr-remote rpull + ctr run of the app, lazylayer snapshotter vs containerd-stargz-grpc",
    11: "cold start of the Python app with a learned profile from another cache (vs item 8)",
}


@dataclass
class Row:
    item: int
    key: str
    title: str
    #: what the baseline column measures (None: only the Go peer is compared)
    baseline: str | None
    #: "s" for durations, "us" for latencies; samples are always stored in seconds
    unit: str = "s"
    #: bytes moved per sample (sequential reads): tables add a throughput
    nbytes: int | None = None
    lazy: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    #: the Go stargz-store doing the same (items 8 and 9)
    go: list[float] = field(default_factory=list)

    @property
    def lazy_median(self) -> float:
        return median(self.lazy)

    @property
    def base_median(self) -> float:
        return median(self.base)

    @property
    def go_median(self) -> float:
        return median(self.go)

    @property
    def ratio(self) -> float:
        return _ratio(self.lazy, self.base)

    @property
    def go_ratio(self) -> float:
        return _ratio(self.lazy, self.go)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "item": self.item, "key": self.key, "title": self.title, "baseline": self.baseline, "unit": self.unit,
            "lazylayer": {"median": self.lazy_median, "samples": self.lazy},
            "baseline_value": {"median": self.base_median, "samples": self.base},
            "ratio": self.ratio,
            "go": {"median": self.go_median, "samples": self.go},
            "go_ratio": self.go_ratio,
        }
        if self.nbytes:
            out["bytes"] = self.nbytes
            for side, seconds in (("lazylayer", self.lazy_median), ("baseline_value", self.base_median),
                                  ("go", self.go_median)):
                out[side]["mib_per_s"] = _rate(self.nbytes, seconds)
        return out


def _ratio(lazy: list[float], other: list[float]) -> float:
    if not lazy or not other or median(other) <= 0:
        return math.nan
    return median(lazy) / median(other)


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / (1 << 20) / seconds if seconds > 0 else math.nan


@dataclass
class Results:
    rows: dict[str, Row] = field(default_factory=dict)
    #: figures with no baseline (mount times, entry counts...), one list of samples per name
    extras: dict[str, list[float]] = field(default_factory=dict)
    #: the Go peer: available, binary, version, or the reason it is missing (bench/peer.py)
    peer: dict[str, object] = field(default_factory=dict)

    def row(self, item: int, key: str, title: str, baseline: str, **kw: Any) -> Row:
        """Declare a row (idempotent: later runs add samples to the same one)."""
        if key not in self.rows:
            self.rows[key] = Row(item, key, title, baseline, **kw)
        return self.rows[key]

    def extra(self, name: str, value: float) -> None:
        self.extras.setdefault(name, []).append(value)

    def by_item(self) -> dict[int, list[Row]]:
        out: dict[int, list[Row]] = {i: [] for i in ITEMS}
        for row in self.rows.values():
            out[row.item].append(row)
        return out

    def slowest(self) -> Row | None:
        """The row with the largest finite ratio: where profiling should start."""
        finite = [r for r in self.rows.values() if math.isfinite(r.ratio)]
        return max(finite, key=lambda r: r.ratio, default=None)
