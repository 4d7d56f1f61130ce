"""The real entry points start working workers: `lazylayer worker` and the pool's default command."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

from lazylayer.daemon.pool import WorkerPool
from tests.ipc.harness import DEADLINE, HEARTBEAT, trio_test

LAZYLAYER = str(Path(sys.executable).with_name("lazylayer"))


@trio_test
async def test_default_worker_command_serves_ping(endpoint):
    async with WorkerPool(endpoint, spawn=1, heartbeat_interval=HEARTBEAT) as pool:
        assert pool.spawner.command[:3] == [sys.executable, "-m", "lazylayer.workers.main"]
        with trio.fail_after(DEADLINE):
            await pool.wait_workers(1)
            reply = await pool.submit("ping")
        assert reply.result["pid"] == pool.status().processes[0].pid


@trio_test
async def test_lazylayer_worker_cli_serves_and_exits_cleanly(endpoint):
    command = [LAZYLAYER, "worker", "--endpoint", endpoint, "--heartbeat-interval", str(HEARTBEAT)]
    async with WorkerPool(endpoint, heartbeat_interval=HEARTBEAT) as pool:
        process = await trio.lowlevel.open_process(command)
        try:
            with trio.fail_after(DEADLINE):
                status = await pool.wait_workers(1)
                assert status.workers[0].pid == process.pid and status.workers[0].capacity == 2
                assert (await pool.submit("ping")).result["pid"] == process.pid
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
                await pool.wait_for(lambda s: s.workers == [])
        finally:
            if process.returncode is None:
                process.kill()


def test_worker_cli_reports_a_bad_capacity_in_one_line(endpoint, capfd):
    from lazylayer.daemon.cli.main import main

    assert main(["worker", "--endpoint", endpoint, "--capacity", "0"]) == 1
    err = capfd.readouterr().err
    assert err.strip() == "lazylayer worker: worker capacity must be at least 1"
