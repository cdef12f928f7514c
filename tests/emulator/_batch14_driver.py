"""Drive the emulator with the real azure-batch 14.x SDK (msrest, sync) and print a JSON summary on stdout.

Run as a script, never imported by pytest: ``test_legacy_sdk14.py`` starts it in a subprocess with the 14.x
installation first on ``PYTHONPATH``, because 14.x and the project's 15.x share one distribution name.

Usage::

    BATCH14_ACCOUNT_KEY=<base64 key> python _batch14_driver.py <endpoint> <account name>

Each step is recorded under its name in the summary: the values the test asserts on, or ``{"error": ...}`` if
the step raised, so that one wire difference does not hide the steps after it. A failure of the set-up steps
that later ones depend on (the pool, the job) stops the tour early; the summary says which step it was.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import azure.batch

# The whole point: this process talks through the 14.x SDK, not the project's 15.x. Checked before the imports
# that only 14.x has, so a wrong PYTHONPATH says so instead of failing on a missing name.
VERSION = str(getattr(azure.batch, "__version__", "unknown"))
if not VERSION.startswith("14."):
    sys.exit(
        f"azure.batch {VERSION} was imported from {azure.batch.__file__}; this driver needs 14.x first on PYTHONPATH"
    )

from azure.batch import BatchServiceClient  # noqa: E402
from azure.batch import models as m  # noqa: E402
from azure.batch.batch_auth import SharedKeyCredentials  # noqa: E402

POOL_ID = "sdk14-pool"
JOB_ID = "sdk14-job"
POLL = 0.05
LIMIT = 30.0


def image() -> m.VirtualMachineConfiguration:
    return m.VirtualMachineConfiguration(
        image_reference=m.ImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
    )


def new_pool() -> m.PoolAddParameter:
    return m.PoolAddParameter(
        id=POOL_ID, vm_size="standard_d2s_v3", virtual_machine_configuration=image(), target_dedicated_nodes=1
    )


def wait_for(probe: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + LIMIT
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {LIMIT} s")
        time.sleep(POLL)
    return value


def batch_error(exc: m.BatchErrorException) -> dict[str, Any]:
    """The parts of a 14.x ``BatchErrorException`` a caller acts on."""
    error = exc.error
    return {
        "status": exc.response.status_code,
        "code": error.code,
        "message": error.message.value if error.message is not None else None,
        "lang": error.message.lang if error.message is not None else None,
        "values": {v.key: v.value for v in error.values or []},
    }


def tour(batch: BatchServiceClient, wrong: BatchServiceClient, summary: dict[str, Any]) -> None:
    def step(name: str, action: Callable[[], Any], *, required: bool = False) -> None:
        try:
            summary[name] = action()
        except Exception as exc:  # recorded for the test to report; the tour goes on where it can
            summary[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            if required:
                raise StopTour(name) from exc

    def create_pool() -> dict[str, Any]:
        batch.pool.add(new_pool())
        pool = batch.pool.get(POOL_ID)
        return {"id": pool.id, "vm_size": pool.vm_size, "state": str(pool.state.value), "etag": bool(pool.e_tag)}

    def idle_node() -> dict[str, Any]:
        def idle() -> list[m.ComputeNode]:
            return [n for n in batch.compute_node.list(POOL_ID) if n.state == m.ComputeNodeState.idle]

        nodes = wait_for(idle, "an idle node")
        pool = batch.pool.get(POOL_ID)
        return {
            "node_state": nodes[0].state.value,
            "allocation_state": pool.allocation_state.value,
            "current_dedicated_nodes": pool.current_dedicated_nodes,
        }

    def create_job() -> dict[str, Any]:
        batch.job.add(m.JobAddParameter(id=JOB_ID, pool_info=m.PoolInformation(pool_id=POOL_ID)))
        job = batch.job.get(JOB_ID)
        return {"id": job.id, "pool_id": job.pool_info.pool_id, "state": job.state.value}

    def add_task() -> dict[str, Any]:
        batch.task.add(JOB_ID, m.TaskAddParameter(id="hello", command_line="/bin/sh -c 'echo hello from 14.x'"))
        return {"state": batch.task.get(JOB_ID, "hello").state.value}

    def add_collection() -> dict[str, Any]:
        tasks = [m.TaskAddParameter(id=f"t{i}", command_line=f"/bin/sh -c 'exit {i % 2}'") for i in range(4)]
        result = batch.task.add_collection(JOB_ID, tasks)
        return {"results": sorted([r.task_id, r.status.value] for r in result.value)}

    def add_collection_duplicate() -> dict[str, Any]:
        # 14.x's add_collection treats a clienterror whose code is TaskExists as done (ids are the caller's
        # idempotency key), so the duplicate comes back as a result instead of a CreateTasksErrorException.
        result = batch.task.add_collection(JOB_ID, [m.TaskAddParameter(id="T0", command_line="/bin/true")])
        (only,) = result.value
        return {"task_id": only.task_id, "status": only.status.value, "code": only.error.code}

    def completed() -> dict[str, Any]:
        def done() -> list[m.CloudTask] | None:
            tasks = list(batch.task.list(JOB_ID))
            return tasks if all(t.state == m.TaskState.completed for t in tasks) else None

        tasks = wait_for(done, "every task completing")
        return {t.id: t.execution_info.exit_code for t in sorted(tasks, key=lambda t: t.id)}

    def stdout() -> dict[str, Any]:
        chunks = batch.file.get_from_task(JOB_ID, "hello", "stdout.txt")
        return {"text": b"".join(chunks).decode()}

    def task_counts() -> dict[str, Any]:
        counts = batch.job.get_task_counts(JOB_ID)
        return {
            "tasks": counts.task_counts.as_dict(),
            "slots": counts.task_slot_counts.as_dict(),
        }

    def filtered_lists() -> dict[str, Any]:
        pools = batch.pool.list(m.PoolListOptions(filter=f"id eq '{POOL_ID}'", select="id,vmSize"))
        jobs = batch.job.list(m.JobListOptions(filter="state eq 'active'", select="id"))
        none = batch.job.list(m.JobListOptions(filter="id eq 'no-such-job'"))
        tasks = batch.task.list(JOB_ID, m.TaskListOptions(filter="executionInfo/exitCode eq 1", select="id"))
        pool_list = [p.as_dict() for p in pools]
        return {
            "pools": pool_list,
            "jobs": [j.as_dict() for j in jobs],
            "no_jobs": [j.id for j in none],
            "failed_tasks": sorted(t.id for t in tasks),
        }

    def conditional_patch() -> dict[str, Any]:
        etag = batch.job.get(JOB_ID).e_tag
        try:
            batch.job.patch(JOB_ID, m.JobPatchParameter(priority=5), m.JobPatchOptions(if_match='"stale"'))
        except m.BatchErrorException as exc:
            stale = batch_error(exc)
        else:
            stale = {"error": "a stale If-Match was accepted"}
        batch.job.patch(JOB_ID, m.JobPatchParameter(priority=5), m.JobPatchOptions(if_match=etag))
        return {"stale": stale, "priority": batch.job.get(JOB_ID).priority}

    def node_counts() -> dict[str, Any]:
        counts = [c for c in batch.account.list_pool_node_counts() if c.pool_id == POOL_ID]
        return {"dedicated_total": counts[0].dedicated.total, "dedicated_idle": counts[0].dedicated.idle}

    def paging() -> list[list[str]]:
        # msrest follows odata.nextLink as given, with no query of its own: the link must carry the api-version.
        paged = batch.task.list(JOB_ID, m.TaskListOptions(max_results=2, select="id"))
        pages = []
        while paged.next_link is not None:
            pages.append([t.id for t in paged.advance_page()])
        return pages

    def missing_job() -> dict[str, Any]:
        try:
            batch.job.get("no-such-job")
        except m.BatchErrorException as exc:
            return batch_error(exc)
        return {"error": "no BatchErrorException for a missing job"}

    def pool_again() -> dict[str, Any]:
        try:
            batch.pool.add(new_pool())
        except m.BatchErrorException as exc:
            return batch_error(exc)
        return {"error": "no BatchErrorException for a second pool with the same id"}

    def wrong_key() -> dict[str, Any]:
        try:
            list(wrong.pool.list())
        except m.BatchErrorException as exc:
            return batch_error(exc)
        return {"error": "a wrong key was accepted"}

    def delete_both() -> dict[str, Any]:
        batch.job.delete(JOB_ID)
        batch.pool.delete(POOL_ID)

        def gone() -> bool:
            return not batch.pool.exists(POOL_ID) and not [j for j in batch.job.list() if j.id == JOB_ID]

        wait_for(gone, "the job and pool being deleted")
        return {"pool_exists": batch.pool.exists(POOL_ID), "jobs": [j.id for j in batch.job.list()]}

    step("create_pool", create_pool, required=True)
    step("idle_node", idle_node, required=True)
    step("create_job", create_job, required=True)
    step("add_task", add_task)
    step("add_collection", add_collection)
    step("add_collection_duplicate", add_collection_duplicate)
    step("completed", completed)
    step("stdout", stdout)
    step("task_counts", task_counts)
    step("filtered_lists", filtered_lists)
    step("conditional_patch", conditional_patch)
    step("node_counts", node_counts)
    step("paging", paging)
    step("missing_job", missing_job)
    step("pool_again", pool_again)
    step("wrong_key", wrong_key)
    step("delete", delete_both)


class StopTour(Exception):
    """A step the rest of the tour depends on failed."""


def main(argv: list[str]) -> int:
    endpoint, account = argv[1], argv[2]
    key = os.environ["BATCH14_ACCOUNT_KEY"]
    wrong_key = base64.b64encode(b"not the account key, but well formed").decode()
    batch = BatchServiceClient(SharedKeyCredentials(account, key), batch_url=endpoint)
    wrong = BatchServiceClient(SharedKeyCredentials(account, wrong_key), batch_url=endpoint)
    summary: dict[str, Any] = {"sdk_version": VERSION, "api_version": batch.api_version}
    # msrest retries 5xx and dropped connections with backoff; from the emulator those are bugs to report.
    for client in (batch, wrong):
        client.config.retry_policy.retries = 1
    try:
        tour(batch, wrong, summary)
    except StopTour as exc:
        summary["stopped_at"] = str(exc)
    json.dump(summary, sys.stdout, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
