"""What a front must tell the holder so the next front can take its FUSE connection over: the
state the kernel may still name that LMDB does not hold (daemon/holder.py keeps the records).

- layout inodes (daemon/layout.py LayoutInodes reports each new one);
- `use` references the layer store's clients took (podman creates MNT/<ref>/<digest>/use per
  layer it mounts and removes the layer dir when done): a takeover must not forget them, or the
  resolver would let a layer of a running container go after its TTL;
- `lazylayer mount` records (daemon/service.py writes those);
- the connection's id, made when it was mounted: clients that take references (the containerd
  snapshotter) tell a takeover, whose journal keeps their references, from a fresh mount, which
  has none (`connection_file`). A pid changes with every takeover, a device number is reused.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the holder imports live_mounts and must stay light (no trio, no pyfuse3)
    from lazylayer.daemon.layout import LayoutInodes

Sink = Callable[[dict[str, Any]], None]

#: RUN/<this>: the id of the FUSE connection the front serves
CONNECTION_FILE = "connection"


class Journal:
    def __init__(self, layout: "LayoutInodes") -> None:
        self.layout = layout
        #: `use` references held now, by (ref, digest)
        self.uses: Counter[tuple[str, str]] = Counter()
        #: the connection's id: new with each mount, kept by a takeover (`restore`)
        self.connection = uuid.uuid4().hex
        self._sink: Sink | None = None

    def attach(self, sink: Sink) -> None:
        self._sink = self.layout.on_new = sink
        sink({"connection": self.connection})

    def use(self, ref: str, digest: str, change: int) -> None:
        self.uses[(ref, digest)] += change
        if self._sink is not None:
            self._sink({"use": [ref, digest, change]})

    def restore(self, records: list[dict[str, Any]]) -> None:
        """After a takeover: the connection keeps the id it was mounted with."""
        self.connection = next((r["connection"] for r in records if isinstance(r.get("connection"), str)),
                               self.connection)

    def records(self) -> list[dict[str, Any]]:
        """Everything a sink attached now would have been told so far."""
        return ([{"connection": self.connection}] + self.layout.records()
                + [{"use": [ref, digest, n]} for (ref, digest), n in self.uses.items() if n])

    def publish(self, run_dir: str) -> None:
        """Write the connection's id to RUN/`CONNECTION_FILE` (root's, like the run dir)."""
        path = os.path.join(run_dir, CONNECTION_FILE)
        with open(f"{path}.tmp", "w", encoding="ascii") as f:
            f.write(self.connection + "\n")
        os.replace(f"{path}.tmp", path)

    @staticmethod
    def withdraw(run_dir: str) -> None:
        """The connection is unmounted (a clean stop without a holder to hand it to)."""
        try:
            os.unlink(os.path.join(run_dir, CONNECTION_FILE))
        except FileNotFoundError:
            pass


def uses_in(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    uses: Counter[tuple[str, str]] = Counter()
    for record in records:
        if "use" in record:
            ref, digest, change = record["use"]
            uses[(ref, digest)] += change
    return uses


def live_mounts(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The `lazylayer mount` records still mounted after ``records``, by target, in mount order."""
    live: dict[str, dict[str, Any]] = {}
    for record in records:
        if "mount" in record:
            live[record["mount"]["target"]] = record["mount"]
        elif "umount" in record:
            live.pop(record["umount"], None)
    return live
