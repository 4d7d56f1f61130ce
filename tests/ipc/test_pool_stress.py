"""Many concurrent requests through the pool: the edge-triggered ZMQ_FD deadlock must not appear.

limits §3.4: a client that mishandles ZMQ_FD works with one request in flight and deadlocks after
a few hundred with 16 in flight, so this runs 32 in flight against 2 real worker processes.
"""

from __future__ import annotations

import pytest
import trio

from tests.ipc.harness import DEADLINE, make_pool, trio_test


async def _hammer(endpoint: str, in_flight: int, iterations: int) -> dict[int, int]:
    served: dict[int, int] = {}
    async with make_pool(endpoint, spawn=2, capacity=4) as pool:
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(2)

        async def client(task: int) -> None:
            for i in range(iterations):
                payload = f"{task}:{i}".encode() * (1 + i % 7)
                reply = await pool.submit("echo", {"task": task, "i": i}, [payload], timeout=DEADLINE)
                assert reply.result["params"] == {"task": task, "i": i}
                assert [bytes(p) for p in reply.payloads] == [payload]
                served[reply.result["pid"]] = served.get(reply.result["pid"], 0) + 1

        with trio.fail_after(DEADLINE * 5):
            async with trio.open_nursery() as nursery:
                for task in range(in_flight):
                    nursery.start_soon(client, task)
        status = pool.status()
        assert sum(w.jobs_done for w in status.workers) == in_flight * iterations
    return served


@trio_test
async def test_32_in_flight_no_stall(endpoint):
    served = await _hammer(endpoint, in_flight=32, iterations=300)
    assert sum(served.values()) == 32 * 300
    assert len(served) == 2, "load-aware dispatch used both workers"


@pytest.mark.slow
@trio_test
async def test_32_in_flight_3000_iterations(endpoint):
    served = await _hammer(endpoint, in_flight=32, iterations=3000)
    assert sum(served.values()) == 32 * 3000
