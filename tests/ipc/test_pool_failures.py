"""Worker deaths, departures and absences: requests still complete, or fail with a typed error."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from lazylayer.daemon.pool import WorkerPool
from lazylayer.shared.errors import PoolUnavailableError, RequestTimeoutError, WorkerLostError
from tests.ipc.harness import DEADLINE, HEARTBEAT, make_pool, trio_test, worker_command


async def _reap(process) -> int:
    return await trio.to_thread.run_sync(process.wait)


@trio_test
async def test_sigkill_mid_job_completes_on_another_worker(endpoint, workers, notifier, run_dir):
    first, second = workers.start(), workers.start()
    gate = run_dir / "gate"
    async with make_pool(endpoint) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(2)
            async with trio.open_nursery() as nursery:
                replies = []

                async def submit() -> None:
                    replies.append(await pool.submit("gate", {"gate": str(gate), "notify": notifier.path}))

                nursery.start_soon(submit)
                victim = (await notifier.next()).pid
                os.kill(victim, signal.SIGKILL)
                survivor = await notifier.next()  # the same job, started again elsewhere
                assert survivor.pid != victim and survivor.pid in (first.pid, second.pid)
                gate.touch()
        assert replies[0].result["pid"] == survivor.pid
        status = pool.status()
        assert status.workers_lost == 1
        assert [w.pid for w in status.workers] == [survivor.pid]


@trio_test
async def test_all_workers_gone_then_a_new_worker_serves(endpoint, workers):
    first = workers.start()
    async with make_pool(endpoint) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            assert (await pool.submit("ping")).result["pid"] == first.pid
            first.kill()
            await _reap(first)
            timeout = 10 * HEARTBEAT  # longer than death detection (3 beats)
            with trio.fail_after(timeout + 5):
                with pytest.raises(PoolUnavailableError, match="no worker able to run 'ping'"):
                    await pool.submit("ping", timeout=timeout)
            assert pool.status().workers == []
            second = workers.start()  # the front is not restarted
            await pool.wait_workers(1)
            assert (await pool.submit("ping")).result["pid"] == second.pid


@trio_test
async def test_request_timeout_is_typed_and_frees_nothing_twice(endpoint, workers, notifier, run_dir):
    workers.start()
    gate = run_dir / "gate"
    async with make_pool(endpoint) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            with pytest.raises(RequestTimeoutError, match="no answer within"):
                await pool.submit("gate", {"gate": str(gate), "notify": notifier.path}, timeout=0.5)
            await notifier.next()
            gate.touch()  # the worker still finishes the abandoned job; its slot comes back
            await pool.wait_for(lambda s: s.workers[0].in_flight == 0)
            assert (await pool.submit("ping")).result["pid"] == workers.processes[0].pid
            assert pool.status().queued == {"foreground": 0, "prefetch": 0, "background": 0}


@trio_test
async def test_poison_job_fails_after_bounded_attempts(endpoint, notifier):
    async with make_pool(endpoint, spawn=2, max_attempts=2) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(2)
            with pytest.raises(WorkerLostError, match="2 worker"):
                await pool.submit("crash", {"notify": notifier.path})
            notes = await notifier.take(2)
            assert len({n.pid for n in notes}) == 2
            assert notifier.pending() == []
            # Both were restarted and serve again.
            await pool.wait_for(lambda s: sum(p.restarts for p in s.processes) == 2 and len(s.workers) == 2)
            assert "pid" in (await pool.submit("ping")).result


@trio_test
async def test_spawned_workers_restart_with_growing_backoff(endpoint):
    async with make_pool(endpoint, spawn=1, restart_backoff=0.1) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            pids = [(await pool.submit("ping")).result["pid"]]
            for expected_backoff in (0.2, 0.4):
                os.kill(pids[-1], signal.SIGKILL)
                pids.append((await pool.submit("ping")).result["pid"])
                process = pool.status().processes[0]
                assert process.pid == pids[-1] and process.running
                assert process.backoff == pytest.approx(expected_backoff)
            assert len(set(pids)) == 3
            status = pool.status()
            assert status.processes[0].restarts == 2
            assert [(w.pid, w.restarts) for w in status.workers] == [(pids[-1], 2)]


@trio_test
async def test_sigterm_lets_the_running_job_finish(endpoint, workers, notifier, run_dir):
    worker = workers.start()
    gate = run_dir / "gate"
    async with make_pool(endpoint) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            async with trio.open_nursery() as nursery:
                replies = []

                async def submit() -> None:
                    replies.append(await pool.submit("gate", {"gate": str(gate), "notify": notifier.path}))

                nursery.start_soon(submit)
                await notifier.next()
                worker.send_signal(signal.SIGTERM)
                # The worker announces capacity 0: nothing new is sent to it while it drains.
                await pool.wait_for(lambda s: [w.capacity for w in s.workers] == [0])
                gate.touch()
            assert replies[0].result["pid"] == worker.pid
            assert await _reap(worker) == 0
            await pool.wait_for(lambda s: s.workers == [])
            assert pool.status().workers_lost == 0  # it said goodbye; it did not die


@trio_test
async def test_sigterm_hands_back_an_unfinished_job(endpoint, workers, notifier, run_dir):
    leaving = workers.start(drain_timeout=0.3)
    gate = run_dir / "gate"
    async with make_pool(endpoint) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            async with trio.open_nursery() as nursery:
                replies = []

                async def submit() -> None:
                    replies.append(await pool.submit("gate", {"gate": str(gate), "notify": notifier.path}))

                nursery.start_soon(submit)
                assert (await notifier.next()).pid == leaving.pid
                staying = workers.start()
                await pool.wait_workers(2)
                leaving.send_signal(signal.SIGTERM)
                assert (await notifier.next()).pid == staying.pid  # handed back, run elsewhere
                gate.touch()
            assert replies[0].result["pid"] == staying.pid
            assert await _reap(leaving) == 0
            assert pool.status().workers_lost == 0


@trio_test
async def test_workers_find_a_restarted_front(endpoint, workers):
    worker = workers.start()
    for _ in range(2):  # the same worker process serves two successive fronts
        async with make_pool(endpoint) as pool:
            with trio.fail_after(DEADLINE):
                await pool.wait_workers(1)
                assert (await pool.submit("ping")).result["pid"] == worker.pid
    assert worker.poll() is None


@trio_test
async def test_pool_refuses_an_endpoint_it_cannot_bind(run_dir):
    with pytest.raises(PoolUnavailableError, match="cannot listen"):
        async with WorkerPool(f"ipc://{run_dir}/missing-dir/workers.sock"):
            pass


@trio_test
async def test_shutdown_fails_pending_requests_and_stops_spawned_workers(endpoint, notifier, run_dir):
    gate = run_dir / "gate"
    results = []
    async with trio.open_nursery() as outer:
        async with make_pool(endpoint, spawn=1, worker_command=worker_command(endpoint, drain_timeout=0.2)) as pool:
            with trio.fail_after(DEADLINE):
                await pool.wait_workers(1)

                async def submit() -> None:
                    try:
                        await pool.submit("gate", {"gate": str(gate), "notify": notifier.path})
                    except PoolUnavailableError as exc:
                        results.append(exc)

                outer.start_soon(submit)
                await notifier.next()
                process = pool.status().processes[0]
    assert "shutting down" in str(results[0])
    assert process.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


@trio_test
async def test_a_vanished_peer_is_dropped_on_send_not_after_silence(endpoint, workers):
    """ROUTER_MANDATORY: the first send to a peer whose pipe is gone fails (EHOSTUNREACH), so the
    worker is dropped then, even though heartbeat silence alone would take ~forever here."""
    worker = workers.start()
    async with make_pool(endpoint, heartbeat_liveness=10_000) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            worker.kill()
            await _reap(worker)
            with pytest.raises(PoolUnavailableError):
                await pool.submit("ping", timeout=2.0)
            status = pool.status()
            assert status.workers == [] and status.workers_lost == 1


@trio_test
async def test_resize_starts_and_retires_spawned_workers(endpoint):
    async with make_pool(endpoint, spawn=1) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            pool.resize(3)
            await pool.wait_workers(3)
            pool.resize(1)
            status = await pool.wait_for(lambda s: len(s.workers) == 1 and len(s.processes) == 1)
            assert status.workers_lost == 0  # retired workers said goodbye; nobody died
            assert status.processes[0].restarts == 0 and status.processes[0].running
            assert (await pool.submit("ping")).result["pid"] == status.workers[0].pid
