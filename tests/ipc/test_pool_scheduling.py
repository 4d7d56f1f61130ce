"""Dispatch policy: dedup, priorities with the background quiet period, load spreading, typed errors."""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from lazylayer.daemon.jobqueue import Priority
from lazylayer.daemon.pool import WorkerPool
from lazylayer.shared.errors import DigestMismatchError, PoolUnavailableError, RegistryError, WorkerError
from tests.ipc.harness import DEADLINE, QUIET, make_pool, trio_test


@asynccontextmanager
async def one_worker(endpoint, capacity: int) -> AsyncIterator[WorkerPool]:
    """A pool with one spawned worker of ``capacity`` slots, connected, under DEADLINE."""
    async with make_pool(endpoint, spawn=1, capacity=capacity) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            yield pool


@trio_test
async def test_dedup_runs_one_job_for_concurrent_submits(endpoint, notifier, run_dir):
    gate = run_dir / "gate"
    params = {"gate": str(gate), "notify": notifier.path, "tag": "shared"}
    async with make_pool(endpoint, spawn=2, capacity=2) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(2)
            replies = []

            async def submit(priority: Priority) -> None:
                replies.append(await pool.submit("gate", params, priority=priority, dedup_key=("chunk", "sha256:x")))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(submit, list(Priority)[i % 3])
                await notifier.next()
                gate.touch()
            assert len(replies) == 20 and len({id(r) for r in replies}) == 1
            assert notifier.pending() == []  # exactly one job ran
            # Once finished, the key is free again: a later submit runs a new job.
            await pool.submit("gate", params, dedup_key=("chunk", "sha256:x"))
            assert len(await notifier.take(1)) == 1
            assert sum(w.jobs_done for w in pool.status().workers) == 2


@trio_test
async def test_background_waits_while_foreground_is_active(endpoint, notifier, run_dir):
    gate = run_dir / "gate"
    async with make_pool(endpoint, spawn=1, capacity=2) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            order = []

            async def submit(kind: str, tag: str, priority: Priority) -> None:
                params = {"gate": str(gate), "notify": notifier.path, "tag": tag}
                await pool.submit(kind, params, priority=priority)
                order.append(tag)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, "gate", "hold", Priority.FOREGROUND)
                assert (await notifier.next()).tag == "hold"
                nursery.start_soon(submit, "echo", "bg", Priority.BACKGROUND)
                # A foreground round trip proves the dispatcher ran with a free slot...
                await submit("echo", "fg", Priority.FOREGROUND)
                # ...and still held the background job back.
                status = pool.status()
                assert status.queued["background"] == 1 and status.background_held and status.foreground_active
                gate.touch()
            assert order == ["fg", "hold", "bg"]
            assert [n.tag for n in notifier.pending()] == ["fg", "bg"]
            assert not pool.status().background_held  # the quiet period has passed


@trio_test
async def test_the_quiet_gate_opens_a_quiet_period_after_the_last_foreground_job(endpoint, notifier, run_dir):
    gate = run_dir / "gate"
    opened: list[float] = []
    async with one_worker(endpoint, capacity=2) as pool:

        async def background() -> None:
            await pool.background_gate.wait_open()
            opened.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.submit, "gate", {"gate": str(gate), "notify": notifier.path, "tag": "hold"})
            assert (await notifier.next()).tag == "hold"
            nursery.start_soon(background)
            await trio.sleep(2 * QUIET)
            assert opened == [] and pool.status().background_held
            gate.touch()
            released = trio.current_time()
        assert opened[0] - released >= QUIET and not pool.status().background_held


@trio_test
async def test_queued_background_work_without_a_free_slot_does_not_spin(endpoint, notifier, run_dir):
    """Background jobs queued while every slot is taken (the gate open): the dispatcher sleeps
    until something changes instead of waking in a loop (it did, for an open gate's past time)."""
    gate = run_dir / "gate"
    async with one_worker(endpoint, capacity=1) as pool, trio.open_nursery() as nursery:
        params = {"gate": str(gate), "notify": notifier.path, "tag": "slot"}
        nursery.start_soon(functools.partial(pool.submit, "gate", params, priority=Priority.PREFETCH))
        assert (await notifier.next()).tag == "slot"
        nursery.start_soon(functools.partial(pool.submit, "echo", {"tag": "bg"}, priority=Priority.BACKGROUND))
        await trio.sleep(2 * QUIET)  # the gate is open now, the job still queued
        assert pool.status().queued["background"] == 1 and not pool.status().background_held
        cpu = time.process_time()
        await trio.sleep(1.0)
        assert time.process_time() - cpu < 0.3  # a spinning loop takes the whole second
        gate.touch()


@trio_test
async def test_foreground_then_prefetch_then_background(endpoint, notifier, run_dir):
    gate = run_dir / "gate"
    async with make_pool(endpoint, spawn=1, capacity=1) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)

            async def submit(tag: str, priority: Priority, kind: str = "echo") -> None:
                await pool.submit(kind, {"gate": str(gate), "notify": notifier.path, "tag": tag}, priority=priority)

            async with trio.open_nursery() as nursery:
                # Background work runs when nothing else is there...
                nursery.start_soon(submit, "b0", Priority.BACKGROUND, "gate")
                assert (await notifier.next()).tag == "b0"
                # ...but cannot be preempted; everything queued behind it is served by priority.
                for i in range(1, 4):
                    nursery.start_soon(submit, f"b{i}", Priority.BACKGROUND)
                    nursery.start_soon(submit, f"p{i}", Priority.PREFETCH)
                nursery.start_soon(submit, "f1", Priority.FOREGROUND)
                await pool.wait_for(lambda s: sum(s.queued.values()) == 7)
                gate.touch()
            # (trio does not promise FIFO start order of tasks, so only the classes are compared)
            classes = [n.tag[0] for n in notifier.pending()]
            assert classes == ["f", "p", "p", "p", "b", "b", "b"]


@trio_test
async def test_ranked_pieces_of_two_layers_interleave(endpoint, notifier, run_dir):
    """Within a priority, lower ranks go first: a layer's first piece, queued after all of an
    earlier layer's pieces, is sent before that layer's later ones (daemon/jobqueue.py)."""
    gate = run_dir / "gate"
    async with one_worker(endpoint, capacity=1) as pool, trio.open_nursery() as nursery:

        async def submit(tag: str, rank: int, kind: str = "echo") -> None:
            params = {"gate": str(gate), "notify": notifier.path, "tag": tag}
            await pool.submit(kind, params, priority=Priority.PREFETCH, rank=rank)

        nursery.start_soon(submit, "blocker", 0, "gate")
        assert (await notifier.next()).tag == "blocker"
        queued = [("a0", 0), ("a1", 1), ("a2", 2), ("b0", 0), ("b1", 1)]
        for count, (tag, rank) in enumerate(queued, 1):  # one by one: trio starts tasks in no set order
            nursery.start_soon(submit, tag, rank)
            await pool.wait_for(lambda s, count=count: s.queued["prefetch"] == count)
        gate.touch()
    assert [n.tag for n in notifier.pending()] == ["a0", "b0", "a1", "b1", "a2"]


@trio_test
async def test_prefetch_leaves_a_slot_for_a_read(endpoint, notifier, run_dir):
    """Prefetch pieces queued first never take a worker's last slot of their registry: a read
    submitted after them starts while they still run (it used to wait for one to end)."""
    gate = run_dir / "gate"
    async with one_worker(endpoint, capacity=2) as pool, trio.open_nursery() as nursery:

        def submit(tag: str, priority: Priority) -> None:
            params = {"gate": str(gate), "notify": notifier.path, "tag": tag}
            nursery.start_soon(functools.partial(pool.submit, "gate", params, priority=priority, group="registry"))

        for i in range(3):
            submit(f"p{i}", Priority.PREFETCH)
        first = (await notifier.next()).tag
        await pool.wait_for(lambda s: s.queued["prefetch"] == 2)  # one piece runs, two wait
        submit("read", Priority.FOREGROUND)
        assert (await notifier.next()).tag == "read"  # started beside the piece, the gate still shut
        assert pool.status().queued["prefetch"] == 2
        gate.touch()
    assert sorted(n.tag for n in notifier.pending()) == sorted({"p0", "p1", "p2"} - {first})


@trio_test
async def test_workers_run_disjoint_jobs_concurrently(endpoint, notifier, run_dir):
    gate = run_dir / "gate"
    async with make_pool(endpoint, spawn=2, capacity=2) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(2)
            replies = []

            async def submit(tag: str) -> None:
                replies.append(await pool.submit("gate", {"gate": str(gate), "notify": notifier.path, "tag": tag}))

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(submit, f"j{i}")
                started = await notifier.take(4)  # all four run at once: nobody waits for the gate
                assert sorted(n.tag for n in started) == ["j0", "j1", "j2", "j3"]
                per_worker = Counter(n.pid for n in started)
                assert sorted(per_worker.values()) == [2, 2]
                assert sorted(w.in_flight for w in pool.status().workers) == [2, 2]
                gate.touch()
            assert Counter(r.result["pid"] for r in replies) == per_worker
            assert sorted(w.jobs_done for w in pool.status().workers) == [2, 2]


@trio_test
async def test_exclusive_kinds_run_one_per_worker_process(endpoint, workers, notifier, run_dir):
    """Two layer registrations (pure Python, the GIL held) must not share one process while
    another worker is there or about to connect: the second waits for a process of its own."""
    gate = run_dir / "gate"
    first = workers.start(capacity=2)
    async with make_pool(endpoint, exclusive_kinds=frozenset({"gate"})) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)

            async def submit(tag: str) -> None:
                await pool.submit("gate", {"gate": str(gate), "notify": notifier.path, "tag": tag})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, "a")
                nursery.start_soon(submit, "b")
                assert (await notifier.next()).pid == first.pid
                await pool.submit("echo", {"notify": notifier.path, "tag": "echo"})  # other kinds use the free slot
                assert (await notifier.next()).tag == "echo"
                assert pool.status().queued["foreground"] == 1
                second = workers.start(capacity=2)
                assert (await notifier.next()).pid == second.pid
                gate.touch()


@trio_test
async def test_a_worker_registering_a_layer_takes_no_prefetch_work(endpoint, notifier, run_dir):
    """Its registration holds the GIL: a prefetch piece beside it in the same process slows the
    layer everyone waits for. Demand reads still get the free slot; prefetch waits its turn."""
    gate = run_dir / "gate"
    async with make_pool(endpoint, spawn=1, capacity=2, exclusive_kinds=frozenset({"gate"})) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(pool.submit, "gate", {"gate": str(gate), "notify": notifier.path,
                                                                           "tag": "register"}))
                assert (await notifier.next()).tag == "register"
                nursery.start_soon(functools.partial(pool.submit, "echo", {"notify": notifier.path, "tag": "piece"},
                                                     priority=Priority.PREFETCH))
                await pool.submit("echo", {"notify": notifier.path, "tag": "read"})
                assert (await notifier.next()).tag == "read"
                assert pool.status().queued["prefetch"] == 1 and notifier.pending() == []
                gate.touch()
            assert [n.tag for n in await notifier.take(1)] == ["piece"]


@trio_test
async def test_worker_errors_arrive_typed(endpoint):
    async with make_pool(endpoint, spawn=1) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            with pytest.raises(RegistryError, match="registry said no") as registry:
                await pool.submit("fail", {"error": "registry", "status": 503})
            assert registry.value.status == 503
            with pytest.raises(DigestMismatchError) as digest:
                await pool.submit("fail", {"error": "digest"})
            assert (digest.value.expected, digest.value.actual) == ("sha256:aa", "sha256:bb")
            with pytest.raises(WorkerError, match="ValueError: an untyped bug"):
                await pool.submit("fail", {"error": "other"})
            with pytest.raises(PoolUnavailableError, match="no worker able to run 'no-such-job'"):
                await pool.submit("no-such-job", timeout=0.3)
            status = pool.status()
            assert [(w.jobs_done, w.jobs_failed) for w in status.workers] == [(0, 3)]
            assert (await pool.submit("echo", {"x": 1})).result["params"] == {"x": 1}
            assert status.to_dict()["workers"][0]["pid"] == status.workers[0].pid


@trio_test
async def test_jobs_nobody_waits_on_run_nicer(endpoint):
    """Prefetch and background jobs run in a thread 10 nice steps below its worker (capped at
    19); a foreground job's thread keeps the worker's own share."""
    async with make_pool(endpoint, spawn=1) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            foreground = (await pool.submit("echo", {})).result
            worker_nice = os.getpriority(os.PRIO_PROCESS, foreground["pid"])
            assert foreground["nice"] == worker_nice
            for priority in (Priority.PREFETCH, Priority.BACKGROUND):
                reply = await pool.submit("echo", {}, priority=priority)
                assert reply.result["nice"] == min(19, worker_nice + 10), priority
            assert (await pool.submit("echo", {})).result["nice"] == worker_nice  # a new thread, full share
