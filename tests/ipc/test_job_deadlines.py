"""Job deadlines in the worker (issue 15 item 1): a job that ignores its deadline is abandoned and
its slot given back; when abandoned threads pile up, the worker recycles itself."""

from __future__ import annotations

import pytest
import trio

from lazylayer.shared.errors import RequestTimeoutError
from lazylayer.workers.main import ABANDON_GRACE
from tests.ipc.harness import DEADLINE, HEARTBEAT, make_pool, trio_test

#: deadline + grace + one loop turn of the worker + scheduling slack [s]
FREED_WITHIN = 0.5 + ABANDON_GRACE + HEARTBEAT + 1.5


@trio_test
async def test_a_job_past_its_deadline_is_abandoned_and_its_slot_freed(endpoint, workers, notifier, run_dir):
    worker = workers.start(capacity=2)
    async with make_pool(endpoint) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            with pytest.raises(RequestTimeoutError):
                await pool.submit("gate", {"gate": str(run_dir / "never"), "notify": notifier.path}, timeout=0.5)
            await notifier.next()
        with trio.fail_after(FREED_WITHIN):  # the gate never opens: only abandonment frees the slot
            await pool.wait_for(lambda s: s.workers[0].in_flight == 0)
        assert (await pool.submit("ping")).result["pid"] == worker.pid  # one stuck thread: it stays


@trio_test
async def test_a_worker_full_of_stuck_threads_is_recycled(endpoint, notifier, run_dir):
    async with make_pool(endpoint, spawn=1, capacity=1) as pool:
        with trio.fail_after(DEADLINE):
            first = (await pool.wait_workers(1)).workers[0].pid
            with pytest.raises(RequestTimeoutError):
                await pool.submit("gate", {"gate": str(run_dir / "never"), "notify": notifier.path}, timeout=0.5)
            await notifier.next()
            await pool.wait_for(lambda s: s.processes[0].restarts == 1)
            await pool.wait_workers(1)
            assert (await pool.submit("ping")).result["pid"] != first
