"""The front's part alone (no daemon): a layer's replay starts once every layer of its image is
resolved (nothing reads the image before; replay jobs beside TOC registrations only slow them), or
after REPLAY_WAIT if one never is; the knobs that turn replay and recording off."""

from __future__ import annotations

import trio
import trio.testing

from lazylayer.daemon.profiles import REPLAY_WAIT, ProfileSettings, Profiling
from lazylayer.daemon.fetchstats import ReplayTally
from lazylayer.daemon.remote import LayerDescriptor, ResolvedImage
from lazylayer.shared.store.metadata import NodeRef

M = "sha256:" + "a" * 64
L1, L2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def image() -> ResolvedImage:
    return ResolvedImage("r/x:1", M, "sha256:" + "c" * 64, (LayerDescriptor(L1, 1, "t"), LayerDescriptor(L2, 1, "t")))


def test_replay_waits_for_the_image_s_last_layer() -> None:
    async def main() -> None:
        profiling = Profiling(None, ProfileSettings())  # type: ignore[arg-type]  (the gate needs no remote)
        profiling.image_resolved(image())
        released: list[tuple[str, float]] = []

        async def layer(digest: str, after: float) -> None:
            await trio.sleep(after)
            await profiling._all_resolved(M, digest)
            released.append((digest, trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(layer, L1, 0.0)
            nursery.start_soon(layer, L2, 3.0)
        assert sorted(released) == [(L1, 3.0), (L2, 3.0)]

        profiling.image_resolved(ResolvedImage("r/y:1", "sha256:" + "b" * 64, "c", (LayerDescriptor(L1, 1, "t"),
                                                                                   LayerDescriptor(L2, 1, "t"))))
        start = trio.current_time()
        await profiling._all_resolved("sha256:" + "b" * 64, L1)  # L2 never comes
        assert trio.current_time() - start == REPLAY_WAIT

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_off_knobs_replay_nothing_and_record_nothing() -> None:
    async def main() -> None:
        off = Profiling(None, ProfileSettings(mode="off", record=False))  # type: ignore[arg-type]
        off.image_resolved(image())
        off.note(L1, NodeRef(1, 2), 0, 4096)
        assert not off._active
        # no remote, no layer record: anything past the knob would fail
        await off.replay("r/x:1", M, None)  # type: ignore[arg-type]

    trio.run(main)


def test_a_recording_keeps_each_first_read_once_in_order() -> None:
    on = Profiling(None, ProfileSettings())  # type: ignore[arg-type]
    on.image_resolved(image())
    for node, offset in ((5, 0), (3, 0), (5, 0), (5, 65536), (3, 0)):
        on.note(L2, NodeRef(9, node), offset, 4096)
    on.note("sha256:" + "f" * 64, NodeRef(8, 1), 0, 1)  # a layer of no recorded image
    assert list(on._active[M].reads) == [(9, 5, 0), (9, 3, 0), (9, 5, 65536)]


def test_replay_tally_counts_hits_and_bounds_what_it_remembers() -> None:
    tally = ReplayTally(limit=3)
    tally.fetched([b"a", b"b", b"a"])
    assert (tally.prefetched, tally.hits, tally.waste) == (2, 0, 2)
    assert tally.read([b"a", b"x"]) == 1 and tally.read([b"a"]) == 0  # a hit counts once
    tally.fetched([b"c", b"d", b"e"])  # four unread now: the oldest (b) is forgotten, as waste
    assert (tally.prefetched, tally.hits, tally.waste, tally.forgotten) == (5, 1, 4, 1)
    assert tally.read([b"b"]) == 0 and tally.read([b"e", b"c"]) == 2
    assert tally.waste == 2
