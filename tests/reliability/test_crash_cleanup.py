"""Issue 8, clause 7: a client killed with SIGKILL leaves tagged resources; ``aiobatch cleanup --run-id`` removes
exactly those, and another run's resources (and untagged ones) in the same accounts survive.

A real client runs in a subprocess (settings from the environment, like any user's script): it uploads inputs,
makes an output container, a pool, a job on it with tasks still running, and a job with an auto-pool -- then is
killed with SIGKILL, at a seeded moment or once everything is up. What it created is taken from the servers:
the emulator's pools and jobs and Azurite's containers that appeared while it ran (everything else was there
before it started). ``aiobatch cleanup --run-id ID --dry-run`` must list exactly those and delete nothing; the
sweep itself, run under Batch and storage faults, must delete exactly those.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream
from azure.batch import models
from azure.storage.blob.aio import BlobServiceClient

from aiobatch._azurite import AzuriteServer
from aiobatch._faultproxy import StorageFaultProxy
from aiobatch._specs import to_pool_model
from aiobatch.emulator import Emulator, FaultPlan

from ._runs import QUICK, account_of, aim, arm, client, disarm, inventory, pool_spec, raw_batch
from .conftest import FaultRecorder

pytestmark = [pytest.mark.anyio, pytest.mark.clause(7)]

#: The doomed client: a user's script, settings from the environment, killed before it can clean up.
CRASHING_CLIENT = """
import sys, anyio
from aiobatch import Client, PoolSpec, TaskSpec

def pool(pool_id):
    return PoolSpec(id=pool_id, vm_size="standard_d2s_v3", image_publisher="canonical",
                    image_offer="ubuntu-24_04-lts", image_sku="server",
                    node_agent_sku_id="batch.node.ubuntu 24.04", dedicated_nodes=1, task_slots_per_node=4)

async def main(run_id, inputs, tag):
    async with Client.from_env(run_id=run_id, cleanup=True) as client:  # cleanup it will never get to do
        await client.upload_files(f"in-{tag}", [inputs])
        await client.output_container_sas_url(f"out-{tag}")
        await client.ensure_pool(pool(f"pool-{tag}"))
        await client.wait_for_pool_ready(f"pool-{tag}", poll_interval=0.05, max_poll_interval=0.2)
        await client.create_job(f"job-{tag}", pool_id=f"pool-{tag}")
        await client.submit_tasks(f"job-{tag}", [TaskSpec(id=f"t{i}", command_line="/bin/sleep 60") for i in range(3)])
        await client.create_job(f"auto-{tag}", auto_pool=pool(f"ap-{tag}"))
        await client.submit_tasks(f"auto-{tag}", [TaskSpec(id="t0", command_line="/bin/sleep 60")])
        print("READY", flush=True)
        await anyio.sleep(3600)

anyio.run(main, *sys.argv[1:])
"""


def environment(emu: Emulator, connection_string: str) -> dict[str, str]:
    """What a user sets to point a client (and ``aiobatch cleanup``) at these accounts."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AZURE_")},
        "AZURE_BATCH_ENDPOINT": emu.endpoint,
        "AZURE_BATCH_ACCOUNT_NAME": emu.account_name,
        "AZURE_BATCH_ACCOUNT_KEY": emu.credential.named_key.key,
        "AZURE_STORAGE_CONNECTION_STRING": connection_string,
    }


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``aiobatch cleanup ...`` as a user runs it."""
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, "-m", "aiobatch.cli", "cleanup", *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def others(emu: Emulator, azurite: AzuriteServer, tag: str) -> tuple[str, str]:
    """Another run's pool, job (a task running) and container, and an untagged pool and container."""
    async with client(emu, azurite.connection_string, run_id="the-other-run") as theirs:
        await theirs.ensure_container(f"other-run-{tag}")
        await theirs.ensure_pool(pool_spec("other-pool"))
        await theirs.create_job("other-job", pool_id="other-pool")
        await theirs.submit_tasks("other-job", [])
        await theirs.batch.create_task(
            "other-job", models.BatchTaskCreateOptions(id="t0", command_line="/bin/sleep 60")
        )
    async with raw_batch(emu) as batch:
        await batch.create_pool(to_pool_model(pool_spec("untagged-pool")))
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.create_container(f"untagged-{tag}")
    with anyio.fail_after(10):
        while account_of(emu).jobs["other-job"].tasks["t0"].state != "running":
            await anyio.sleep(0.02)
    return f"other-run-{tag}", f"untagged-{tag}"


@pytest.mark.parametrize("moment", ["everything running", "seeded moment"])
async def test_cleanup_removes_exactly_what_a_killed_run_left(
    azurite: AzuriteServer,
    tmp_path: Path,
    seed: int,
    moment: str,
    fault_record: FaultRecorder,
) -> None:
    rng = random.Random(f"{seed}:clause7:{moment}")
    tag = f"c{rng.randrange(16**6):06x}"
    run_id = f"crashed-{tag}"
    inputs = tmp_path / "clip.mp4"
    inputs.write_bytes(os.urandom(2048))
    script = tmp_path / "doomed.py"
    script.write_text(CRASHING_CLIENT)
    async with Emulator(timings=QUICK) as emu:
        account = account_of(emu)
        survivors = await others(emu, azurite, tag)
        env = environment(emu, azurite.connection_string)
        before = await inventory(emu, azurite.connection_string)

        # The doomed client: killed with SIGKILL once everything is up, or at a seeded moment on the way.
        async with await anyio.open_process([sys.executable, str(script), run_id, str(inputs), tag], env=env) as proc:
            assert proc.stdout is not None
            with anyio.fail_after(60):
                if moment == "everything running":
                    async for line in TextReceiveStream(proc.stdout):
                        if "READY" in line:
                            break
                else:
                    # Somewhere between its first request (its input container) and the end of its setup.
                    while f"in-{tag}" not in (await inventory(emu, azurite.connection_string)).containers:
                        await anyio.sleep(0.01)
                    await anyio.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        await anyio.sleep(0.2)  # a request the client sent just before dying is still answered

        left = (await inventory(emu, azurite.connection_string)).minus(before)
        if moment == "everything running":
            assert left.pools >= {f"pool-{tag}"} and len(left.pools) == 2, left  # its pool and its auto-pool
            assert left.jobs == {f"job-{tag}", f"auto-{tag}"} and left.running, left
            assert left.containers == {f"in-{tag}", f"out-{tag}"}, left
        expected = sorted(
            [f"job {j}" for j in left.jobs]
            + [f"pool {p}" for p in left.pools]
            + [f"container {c}" for c in left.containers]
        )

        # Dry run: lists exactly what the killed run left, deletes nothing.
        code, out, err = await run_cli("--run-id", run_id, "--dry-run", env=env)
        assert code == 0, err
        listed = sorted(line for line in out.splitlines() if line.split(" ", 1)[0] in ("job", "pool", "container"))
        assert listed == expected, out
        assert "dry run" in out or not expected
        assert not account.deleted, "a dry run deleted something"

        # The sweep, under faults: 20% on Batch deletes and listings (a delete whose answer is lost first of
        # all), and a storage 503 and a dropped answer on the first container deletes, through the fault proxy.
        # (The command's retry policy is the default one, with waits of seconds: more faults cost more time.)
        arm(
            emu,
            FaultPlan(
                seed=rng.randrange(2**31),
                rates={"503": 0.1, "reset-after": 0.1},
                operations=("DELETE", "GET /pools", "GET /jobs"),
                retry_after=0,
            ),
        )
        aim(emu, "DELETE", ["reset-after"])
        async with StorageFaultProxy(
            azurite.blob_endpoint,
            account_name=azurite.account_name,
            account_key=azurite.account_key,
            seed=rng.randrange(2**31),
            rates={"503": 0.5, "reset": 0.5},
            methods=("DELETE",),
            limit=2,
        ) as proxy:
            env_faulty = {**env, "AZURE_STORAGE_CONNECTION_STRING": proxy.connection_string}
            with anyio.fail_after(120):
                code, out, err = await run_cli("--run-id", run_id, env=env_faulty)
            storage_injected = dict(proxy.injected)
        disarm(emu)
        assert code == 0, f"{out}\n{err}"
        assert (
            sorted(line for line in out.splitlines() if line.split(" ", 1)[0] in ("job", "pool", "container"))
            == expected
        )

        after = await inventory(emu, azurite.connection_string)
        assert after.minus(before).empty, f"the sweep left {after.minus(before)}"
        # Exactly what the run left was deleted; the other run's and the untagged resources survive, untouched.
        assert before.pools <= after.pools and before.jobs <= after.jobs and before.containers <= after.containers
        deleted = {key for key, n in account.deleted.items() if n}
        assert deleted <= {("pool", p) for p in left.pools} | {("job", j) for j in left.jobs}, deleted
        assert {("job", j) for j in left.jobs} <= deleted
        assert account.jobs["other-job"].tasks["t0"].state in ("active", "running")
        if left.jobs:
            assert not any(job.startswith(tag) or tag in job for job in {r.split("/")[0] for r in after.running})
        if moment == "everything running":
            assert emu.ledger.injected["reset-after"] >= 1
        fault_record(emu.ledger.injected, source="emulator")
        fault_record(storage_injected, source="storage")

        # Sweeping again finds nothing and does nothing.
        code, out, err = await run_cli("--run-id", run_id, env=env)
        assert code == 0 and "nothing to delete" in out, out + err
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        for name in survivors:  # Azurite is the session's: leave it as found
            await service.delete_container(name)
