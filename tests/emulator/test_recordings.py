"""The emulator's answers against the real service's, as recorded in ``recordings/``.

The recordings are the azure-batch SDK's own test exchanges with the live Azure Batch service (see
``recordings/README.md`` for where they come from; they are kept unchanged).  For each recorded answer of interest
the test builds the equivalent entity in the emulator with the real SDK, captures the emulator's raw answer, and
checks that both have the same JSON keys (recursively), the same defaults and the same header names.

Differences are never silently tolerated: a key the emulator leaves out must be named in `UNSUPPORTED` with the
reason; header names must match exactly (transport headers such as ``Server`` aside).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineResponse

from _support import poll_until
from aiobatch.emulator import Emulator, Timings

pytestmark = pytest.mark.anyio

RECORDINGS = Path(__file__).parent / "recordings"

#: Keys of the real service's answers that the emulator leaves out, by path, with the reason.  A path covers
#: everything below it.
UNSUPPORTED: dict[str, str] = {
    "endpointConfiguration": "inbound NAT endpoints (RDP/SSH to nodes) do not exist on loopback nodes",
    "networkConfiguration": "virtual networks and NAT pools are not emulated; only set when the pool asks for them",
    "userAccounts": "node user accounts are not emulated; only set when the pool asks for them",
    "jobPreparationTask": "only set when the job has one; the jobs built here have none (see test_jobprep.py)",
    "jobReleaseTask": "only set when the job has one; the jobs built here have none (see test_jobprep.py)",
    "virtualMachineConfiguration.windowsConfiguration": "Windows images are refused (400)",
    "virtualMachineConfiguration.dataDisks": "data disks are not emulated; only set when the pool asks for them",
    "virtualMachineConfiguration.diskEncryptionConfiguration": "disk encryption is not emulated",
}

#: Headers that say how the bytes travel, not what the service answers.
TRANSPORT_HEADERS = {"server", "strict-transport-security", "transfer-encoding", "content-length", "connection"}

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="Canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


# --- reading recordings -------------------------------------------------------------------------------------


@cache
def _entries(name: str) -> list[dict[str, Any]]:
    path = RECORDINGS / f"test_batch.pyTestBatchtest_batch_{name}.json"
    entries: list[dict[str, Any]] = json.loads(path.read_text())["Entries"]
    return entries


def recorded(name: str, index: int, method: str, path_end: str) -> dict[str, Any]:
    """One recorded exchange, checked to be the one the test means."""
    entry = _entries(name)[index]
    assert entry["RequestMethod"] == method and urlsplit(entry["RequestUri"]).path.endswith(path_end), (
        f"{name}[{index}] is {entry['RequestMethod']} {entry['RequestUri']}"
    )
    return entry


# --- comparing ----------------------------------------------------------------------------------------------


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path in a JSON value: ``a``, ``a.b``, ``list[].c`` (list items merged)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            out |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            out |= key_paths(item, prefix + "[]")
    return out


def _unsupported(path: str) -> bool:
    bare = path.replace("[]", "")
    return any(bare == u or bare.startswith(u + ".") or ("." + u) in bare for u in UNSUPPORTED)


def assert_same_keys(real: Any, emulated: Any, what: str) -> None:
    real_paths = {p for p in key_paths(real) if not _unsupported(p)}
    emulated_paths = key_paths(emulated)
    missing, extra = sorted(real_paths - emulated_paths), sorted(emulated_paths - real_paths)
    assert not missing and not extra, f"{what}: emulator lacks {missing}, adds {extra}"
    if isinstance(real, dict) and isinstance(emulated, dict):
        order_real = [k for k in real if k in emulated]
        order_emulated = [k for k in emulated if k in real]
        assert order_real == order_emulated, f"{what}: key order differs"


def value_at(body: Any, path: str) -> Any:
    for part in path.split("."):
        body = body[part]
    return body


def assert_same_values(real: dict[str, Any], emulated: dict[str, Any], paths: list[str], what: str) -> None:
    for path in paths:
        assert value_at(emulated, path) == value_at(real, path), f"{what}: {path}"


def header_names(headers: Any) -> set[str]:
    return {name.lower() for name in headers} - TRANSPORT_HEADERS


def assert_same_headers(real: dict[str, str], emulated: Any, what: str) -> None:
    want, got = header_names(real), header_names(emulated)
    assert want == got, f"{what}: emulator lacks {sorted(want - got)}, adds {sorted(got - want)}"


def metadata_fragment(body: dict[str, Any]) -> str:
    return str(body["odata.metadata"]).split("$metadata#", 1)[1]


TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")


def assert_timestamps(body: Any, where: str = "") -> None:
    """Every ``...Time``/``lastModified`` value is an ISO 8601 UTC timestamp as the service writes them."""
    if isinstance(body, dict):
        for key, item in body.items():
            # Durations (maxWallClockTime, retentionTime) end in "Time" too; they start with "P".
            if isinstance(item, str) and (key.endswith("Time") or key == "lastModified") and item[:1].isdigit():
                assert TIMESTAMP.match(item), f"{where}.{key} = {item!r}"
            assert_timestamps(item, f"{where}.{key}")
    elif isinstance(body, list):
        for item in body:
            assert_timestamps(item, where)


# --- the emulator side ----------------------------------------------------------------------------------------


class Captured:
    """The raw answers the SDK received (a ``raw_response_hook``)."""

    def __init__(self) -> None:
        self.seen: list[PipelineResponse[Any, Any]] = []

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        self.seen.append(response)

    def last(self, method: str, path_end: str) -> Any:
        for response in reversed(self.seen):
            request = response.http_request
            if request.method == method and urlsplit(request.url).path.endswith(path_end):
                return response.http_response
        raise AssertionError(f"no {method} …{path_end} was sent")

    def body(self, method: str, path_end: str) -> dict[str, Any]:
        body: dict[str, Any] = self.last(method, path_end).json()
        return body


@pytest.fixture
def captured() -> Captured:
    return Captured()


@pytest.fixture
async def batch(batch_emulator: Emulator, captured: Captured) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential, raw_response_hook=captured) as client:
        yield client


async def until(probe: Any, within: float = 10.0) -> Any:
    return await poll_until(probe, within)


async def steady_pool(batch: BatchClient, pool_id: str, nodes: int, **extra: Any) -> None:
    await batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2_v2",
            virtual_machine_configuration=UBUNTU,
            target_dedicated_nodes=nodes,
            **extra,
        )
    )

    async def ready() -> bool:
        pool = await batch.get_pool(pool_id)
        states = [n.state async for n in batch.list_nodes(pool_id)]
        return pool.allocation_state == m.AllocationState.STEADY and states == ["idle"] * nodes

    await until(ready)


# --- pools ----------------------------------------------------------------------------------------------------


POOL_DEFAULTS = [
    "state",
    "resizeTimeout",
    "currentLowPriorityNodes",
    "targetLowPriorityNodes",
    "enableAutoScale",
    "enableInterNodeCommunication",
    "taskSlotsPerNode",
    "taskSchedulingPolicy",
    "virtualMachineConfiguration",
]


async def test_pool_answers_match_the_service(batch: BatchClient, captured: Captured) -> None:
    # update_pools: a plain Linux pool, created, patched with metadata, read, read with $select, deleted.
    await batch.create_pool(
        m.BatchPoolCreateOptions(id="batch_paas_", vm_size="standard_d2_v2", virtual_machine_configuration=UBUNTU)
    )
    real = recorded("update_pools_async_", 0, "POST", "/pools")
    assert_same_headers(real["ResponseHeaders"], captured.last("POST", "/pools").headers, "pool create")
    assert captured.last("POST", "/pools").status_code == real["StatusCode"] == 201

    await batch.update_pool(
        "batch_paas_", m.BatchPoolUpdateOptions(metadata=[m.BatchMetadataItem(name="foo2", value="bar2")])
    )
    real = recorded("update_pools_async_", 2, "PATCH", "/pools/batch_paas_")
    emulated = captured.last("PATCH", "/pools/batch_paas_")
    assert emulated.status_code == real["StatusCode"] == 200
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "pool patch")
    assert emulated.headers["DataServiceId"].endswith("/pools/batch_paas_")

    assert await batch.pool_exists("batch_paas_")
    real = recorded("update_pools_async_", 3, "HEAD", "/pools/batch_paas_")
    assert_same_headers(real["ResponseHeaders"], captured.last("HEAD", "/pools/batch_paas_").headers, "pool HEAD")

    async def steady() -> bool:
        return (await batch.get_pool("batch_paas_")).allocation_state == m.AllocationState.STEADY

    await until(steady)
    real = recorded("update_pools_async_", 4, "GET", "/pools/batch_paas_")
    emulated = captured.last("GET", "/pools/batch_paas_")
    body = emulated.json()
    assert_same_keys(real["ResponseBody"], body, "pool GET")
    assert_same_values(real["ResponseBody"], body, [*POOL_DEFAULTS, "metadata", "allocationState", "vmSize"], "pool")
    assert metadata_fragment(body) == "pools/@Element"
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "pool GET")
    assert body["eTag"] == emulated.headers["ETag"]
    assert_timestamps(body)

    await batch.get_pool("batch_paas_", select=["id", "state"], expand=["stats"])
    real = recorded("update_pools_async_", 5, "GET", "/pools/batch_paas_")
    assert captured.body("GET", "/pools/batch_paas_") == {
        **real["ResponseBody"],
        "odata.metadata": body["odata.metadata"],
    }

    await batch.begin_delete_pool("batch_paas_", polling_interval=0.1)
    real = recorded("update_pools_async_", 6, "DELETE", "/pools/batch_paas_")
    emulated = captured.last("DELETE", "/pools/batch_paas_")
    assert emulated.status_code == real["StatusCode"] == 202
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "pool DELETE")

    await batch.get_pool("batch_paas_")
    real = recorded("update_pools_async_", 7, "GET", "/pools/batch_paas_")
    deleting = captured.body("GET", "/pools/batch_paas_")
    assert deleting["state"] == "deleting"
    assert deleting["eTag"] != body["eTag"], "the service gives a deleting pool a new ETag"
    assert_same_keys(real["ResponseBody"], deleting, "deleting pool GET")


async def test_pool_list_paging_filter_and_node_counts_match_the_service(
    batch: BatchClient, captured: Captured
) -> None:
    for pool_id in ("batch_ade_", "batch_disk_", "batch_iaas"):
        await batch.create_pool(
            m.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2_v2", virtual_machine_configuration=UBUNTU)
        )
    [c async for c in batch.list_pool_node_counts()]
    real = recorded("create_pools_async_", 1, "GET", "/nodecounts")
    emulated = captured.last("GET", "/nodecounts")
    body = emulated.json()
    assert metadata_fragment(body) == "poolnodecounts"
    assert_same_keys(real["ResponseBody"], body, "nodecounts")
    assert body["value"][0] == real["ResponseBody"]["value"][0] | {"poolId": "batch_ade_"}
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "nodecounts")

    pages = [page async for page in batch.list_pools(max_results=1).by_page()]
    assert len(pages) == 3
    real_first = recorded("create_pools_async_", 9, "GET", "/pools")
    first = next(
        r for r in captured.seen if "$skiptoken" not in r.http_request.url and "maxresults" in r.http_request.url
    )
    first_body = first.http_response.json()
    assert_same_keys(real_first["ResponseBody"], first_body, "pool list page")
    real_link, link = urlsplit(real_first["ResponseBody"]["odata.nextLink"]), urlsplit(first_body["odata.nextLink"])
    assert link.path == real_link.path == "/pools"
    assert [k for k, _ in parse_qsl(link.query)] == [k for k, _ in parse_qsl(real_link.query)]
    assert link.scheme and link.netloc, "nextLink is an absolute URL"
    real_last = recorded("create_pools_async_", 11, "GET", "/pools")
    assert "odata.nextLink" not in real_last["ResponseBody"]
    assert "odata.nextLink" not in captured.body("GET", "/pools"), "the last page has no nextLink key"
    assert_same_headers(real_last["ResponseHeaders"], captured.last("GET", "/pools").headers, "pool list")

    [p async for p in batch.list_pools(filter="startswith(id,'batch_ade_')", select=["id", "state"], expand=["stats"])]
    real = recorded("create_pools_async_", 12, "GET", "/pools")
    body = captured.body("GET", "/pools")
    assert body["value"] == real["ResponseBody"]["value"]
    assert metadata_fragment(body) == "pools"


async def test_resize_and_stop_resize_match_the_service(batch: BatchClient, captured: Captured) -> None:
    await steady_pool(batch, "scalepool", 0, display_name="test_pool")
    await batch.begin_resize_pool(
        "scalepool", m.BatchPoolResizeOptions(target_low_priority_nodes=2), polling_interval=0.1
    )
    for index, action in ((13, "resize"), (14, "stopresize")):
        if action == "stopresize":
            await batch.begin_stop_pool_resize("scalepool", polling_interval=0.1)
        real = recorded("scale_pools_async_", index, "POST", f"/pools/scalepool/{action}")
        emulated = captured.last("POST", f"/pools/scalepool/{action}")
        assert emulated.status_code == real["StatusCode"] == 202
        assert_same_headers(real["ResponseHeaders"], emulated.headers, action)
        assert emulated.headers["DataServiceId"].endswith(f"/pools/scalepool/{action}")

    async def stopped() -> bool:
        return (await batch.get_pool("scalepool")).allocation_state == m.AllocationState.STEADY

    await until(stopped)
    real = recorded("scale_pools_async_", 33, "GET", "/pools/scalepool")
    body = captured.body("GET", "/pools/scalepool")
    assert_same_keys(real["ResponseBody"], body, "stopped pool")
    assert [e["code"] for e in body["resizeErrors"]] == ["ResizeStopped"]
    assert body["displayName"] == "test_pool"


# --- nodes ----------------------------------------------------------------------------------------------------


async def test_node_answers_match_the_service(tmp_path: Path) -> None:
    captured = Captured()
    # Nodes slow enough to be seen in ``creating``, as the recording saw them.
    timings_slow = Timings(allocation_delay=0.05, node_start_delay=0.6, deletion_delay=0.05)
    async with (
        Emulator(workdir=tmp_path, timings=timings_slow) as emu,
        BatchClient(emu.endpoint, emu.credential, raw_response_hook=captured) as batch,
    ):
        await batch.create_pool(
            m.BatchPoolCreateOptions(
                id="computenodepool",
                vm_size="standard_d2_v2",
                virtual_machine_configuration=UBUNTU,
                target_dedicated_nodes=2,
            )
        )

        async def creating() -> bool:
            return [n.state async for n in batch.list_nodes("computenodepool")] == ["creating"] * 2

        await until(creating)
        real = recorded("compute_nodes_async_", 0, "GET", "/pools/computenodepool/nodes")
        emulated = captured.last("GET", "/pools/computenodepool/nodes")
        body = emulated.json()
        assert metadata_fragment(body) == "nodes"
        assert_same_keys(real["ResponseBody"], body, "creating nodes")
        assert_same_values(
            real["ResponseBody"]["value"][0],
            body["value"][0],
            ["schedulingState", "vmSize", "totalTasksRun", "isDedicated", "virtualMachineInfo.imageReference"],
            "creating node",
        )
        assert_same_headers(real["ResponseHeaders"], emulated.headers, "node list")

        async def idle() -> bool:
            return [n.state async for n in batch.list_nodes("computenodepool")] == ["idle"] * 2

        await until(idle)
        real = recorded("files_async_", 28, "GET", "/pools/filepool/nodes")
        listed = captured.body("GET", "/pools/computenodepool/nodes")
        assert_same_keys(real["ResponseBody"], listed, "idle nodes")
        assert_same_values(real["ResponseBody"]["value"][0], listed["value"][0], ["nodeAgentInfo.version"], "idle node")
        assert_timestamps(listed)

        node_id = listed["value"][0]["id"]
        await batch.get_node("computenodepool", node_id)
        real = recorded("compute_nodes_async_", 20, "GET", "_d")
        emulated = captured.last("GET", f"/nodes/{node_id}")
        body = emulated.json()
        assert metadata_fragment(body) == "nodes/@Element"
        assert_same_keys(real["ResponseBody"], body, "node GET")
        assert_same_headers(real["ResponseHeaders"], emulated.headers, "node GET")
        assert "ETag" not in emulated.headers


# --- jobs -----------------------------------------------------------------------------------------------------


JOB_DEFAULTS = [
    "priority",
    "maxParallelTasks",
    "usesTaskDependencies",
    "allowTaskPreemption",
    "constraints",
    "poolInfo.autoPoolSpecification",
]


async def test_job_answers_match_the_service(batch: BatchClient, captured: Captured) -> None:
    auto = m.BatchAutoPoolSpecification(
        pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
        pool=m.BatchPoolSpecification(
            vm_size="standard_d2_v2",
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(
                    publisher="Canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"
                ),
                node_agent_sku_id="batch.node.ubuntu 22.04",
            ),
        ),
    )
    await batch.create_job(
        m.BatchJobCreateOptions(id="batch_test_job_", pool_info=m.BatchPoolInfo(auto_pool_specification=auto))
    )
    real = recorded("exception_policy_async_", 1, "POST", "/jobs")
    emulated = captured.last("POST", "/jobs")
    assert emulated.status_code == real["StatusCode"] == 201
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "job create")

    with pytest.raises(HttpResponseError):
        await batch.create_job(
            m.BatchJobCreateOptions(id="batch_test_job_", pool_info=m.BatchPoolInfo(auto_pool_specification=auto))
        )
    real = recorded("exception_policy_async_", 2, "POST", "/jobs")
    assert_error_matches(real, captured.last("POST", "/jobs"), "JobExists")

    await batch.create_job(
        m.BatchJobCreateOptions(id="batch_job2_", pool_info=m.BatchPoolInfo(auto_pool_specification=auto))
    )
    await batch.get_job("batch_job2_")
    real = recorded("jobs_async_", 5, "GET", "/jobs/batch_job2_")
    emulated = captured.last("GET", "/jobs/batch_job2_")
    body = emulated.json()
    assert metadata_fragment(body) == "jobs/@Element"
    assert_same_keys(real["ResponseBody"], body, "job GET")
    assert_same_values(real["ResponseBody"], body, JOB_DEFAULTS, "job")
    assert re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}", body["executionInfo"]["poolId"]), "auto pool id"
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "job GET")
    assert_timestamps(body)

    [j async for j in batch.list_jobs()]
    real = recorded("jobs_async_", 6, "GET", "/jobs")
    listed = captured.body("GET", "/jobs")
    assert metadata_fragment(listed) == "jobs"
    assert_same_keys(real["ResponseBody"], listed, "job list")

    await batch.update_job("batch_job2_", m.BatchJobUpdateOptions(priority=900))
    real = recorded("jobs_async_", 2, "PATCH", "/jobs/batch_job1_")
    emulated = captured.last("PATCH", "/jobs/batch_job2_")
    assert emulated.status_code == real["StatusCode"] == 200
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "job patch")
    assert emulated.headers["DataServiceId"].endswith("/jobs/batch_job2_")

    options: Any = {"terminateReason": "UserTerminate"}
    poller = await batch.begin_terminate_job("batch_job2_", options, polling_interval=0.1)
    real = recorded("jobs_async_", 12, "POST", "/jobs/batch_job1_/terminate")
    emulated = captured.last("POST", "/jobs/batch_job2_/terminate")
    assert emulated.status_code == real["StatusCode"] == 202
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "job terminate")
    assert emulated.headers["DataServiceId"].endswith("/jobs/batch_job2_/terminate")
    await poller.result()
    await batch.get_job("batch_job2_")
    real = recorded("jobs_async_", 17, "GET", "/jobs/batch_job1_")
    body = captured.body("GET", "/jobs/batch_job2_")
    assert_same_keys(real["ResponseBody"], body, "completed job")
    assert body["state"] == "completed"
    assert body["executionInfo"]["terminateReason"] == "UserTerminate"

    deleting = await batch.begin_delete_job("batch_test_job_", polling_interval=0.1)
    real = recorded("jobs_async_", 18, "DELETE", "/jobs/batch_job2_")
    assert_same_headers(real["ResponseHeaders"], captured.last("DELETE", "/jobs/batch_test_job_").headers, "job DELETE")
    await deleting.result()
    with pytest.raises(HttpResponseError):
        await batch.get_job("batch_test_job_")
    real = recorded("jobs_async_", 22, "GET", "/jobs/batch_job2_")
    assert_error_matches(real, captured.last("GET", "/jobs/batch_test_job_"), "JobNotFound")


# --- tasks, files, applications ------------------------------------------------------------------------------


TASK_DEFAULTS = ["userIdentity", "constraints", "requiredSlots"]


async def test_task_and_file_answers_match_the_service(batch: BatchClient, captured: Captured) -> None:
    await batch.create_job(m.BatchJobCreateOptions(id="batch", pool_info=m.BatchPoolInfo(pool_id="filepool")))
    await batch.create_task(
        "batch", m.BatchTaskCreateOptions(id="test_task", command_line="/bin/sh -c 'echo hello world'")
    )
    real = recorded("files_async_", 29, "POST", "/jobs/batch/tasks")
    emulated = captured.last("POST", "/jobs/batch/tasks")
    assert emulated.status_code == real["StatusCode"] == 201
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "task create")

    await batch.get_task("batch", "test_task")
    real = recorded("files_async_", 30, "GET", "/jobs/batch/tasks/test_task")
    emulated = captured.last("GET", "/jobs/batch/tasks/test_task")
    body = emulated.json()
    assert metadata_fragment(body) == "tasks/@Element"
    assert_same_keys(real["ResponseBody"], body, "active task")
    assert_same_values(real["ResponseBody"], body, [*TASK_DEFAULTS, "executionInfo", "state"], "active task")
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "task GET")

    await steady_pool(batch, "filepool", 1)

    async def completed() -> bool:
        return (await batch.get_task("batch", "test_task")).state == m.BatchTaskState.COMPLETED

    await until(completed)
    real = recorded("files_async_", 31, "GET", "/jobs/batch/tasks/test_task")
    body = captured.body("GET", "/jobs/batch/tasks/test_task")
    assert_same_keys(real["ResponseBody"], body, "completed task")
    assert_same_values(
        real["ResponseBody"], body, ["previousState", "executionInfo.result", "executionInfo.exitCode"], "task"
    )
    assert body["nodeInfo"]["taskRootDirectory"] == "workitems/batch/job-1/test_task"
    assert body["nodeInfo"]["taskRootDirectoryUrl"].endswith("/files/workitems/batch/job-1/test_task")
    created_etag = captured.last("POST", "/jobs/batch/tasks").headers["ETag"]
    assert body["eTag"] == created_etag, "as recorded, a task's ETag does not change as it runs"
    assert_timestamps(body)

    [f async for f in batch.list_task_files("batch", "test_task")]
    real = recorded("files_async_", 36, "GET", "/jobs/batch/tasks/test_task/files")
    body = captured.body("GET", "/jobs/batch/tasks/test_task/files")
    assert metadata_fragment(body) == "files"
    by_name = {f["name"]: f for f in body["value"]}
    real_by_name = {f["name"]: f for f in real["ResponseBody"]["value"]}
    assert_same_keys(real_by_name["stderr.txt"], by_name["stderr.txt"], "file entry")
    assert_same_keys(real_by_name["wd"], by_name["wd"], "directory entry")
    assert by_name["stderr.txt"]["properties"]["contentType"] == "text/plain"
    assert isinstance(by_name["stdout.txt"]["properties"]["contentLength"], str), "contentLength is a string"

    await batch.get_task_file_properties("batch", "test_task", "stderr.txt")
    real = recorded("files_async_", 37, "HEAD", "/files/stderr.txt")
    emulated = captured.last("HEAD", "/files/stderr.txt")
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "file HEAD")
    assert emulated.headers["ocp-batch-file-isdirectory"] == "False"
    assert emulated.headers["Content-Type"] == "text/plain"
    data = b"".join([c async for c in await batch.download_task_file("batch", "test_task", "stdout.txt")])
    assert data == b"hello world\n"
    real = recorded("files_async_", 38, "GET", "/files/stderr.txt")
    assert_same_headers(
        real["ResponseHeaders"],
        captured.last("GET", "/files/stdout.txt").headers,
        "file GET",
    )


@pytest.fixture
def emulator_apps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    apps = tmp_path_factory.mktemp("apps")
    (apps / "application_id").mkdir()
    with zipfile.ZipFile(apps / "application_id" / "v1.0.zip", "w") as zf:
        zf.writestr("readme.txt", "hello\n")
    return apps


async def test_application_answers_match_the_service(batch: BatchClient, captured: Captured) -> None:
    [a async for a in batch.list_applications()]
    real = recorded("applications_sync_", 0, "GET", "/applications")
    body = captured.body("GET", "/applications")
    assert metadata_fragment(body) == "listapplicationsummariesresponses"
    assert body["value"] == real["ResponseBody"]["value"]
    assert_same_headers(real["ResponseHeaders"], captured.last("GET", "/applications").headers, "application list")

    await batch.get_application("application_id")
    real = recorded("applications_sync_", 1, "GET", "/applications/application_id")
    body = captured.body("GET", "/applications/application_id")
    assert metadata_fragment(body) == "getapplicationsummaryresponse/@Element"
    assert {k: v for k, v in body.items() if k != "odata.metadata"} == {
        k: v for k, v in real["ResponseBody"].items() if k != "odata.metadata"
    }

    await batch.create_job(m.BatchJobCreateOptions(id="batch18c82235", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task(
        "batch18c82235",
        m.BatchTaskCreateOptions(
            id="python_task_with_app_package",
            command_line="/bin/true",
            application_package_references=[
                m.BatchApplicationPackageReference(application_id="application_id", version="v1.0")
            ],
        ),
    )
    await batch.get_task("batch18c82235", "python_task_with_app_package")
    real = recorded("applications_sync_", 3, "GET", "/tasks/python_task_with_app_package")
    body = captured.body("GET", "/tasks/python_task_with_app_package")
    assert_same_keys(real["ResponseBody"], body, "task with app package")
    assert_same_values(real["ResponseBody"], body, ["applicationPackageReferences", *TASK_DEFAULTS], "task")


# --- errors ---------------------------------------------------------------------------------------------------


def assert_error_matches(real: dict[str, Any], emulated: Any, code: str) -> None:
    body = emulated.json()
    assert emulated.status_code == real["StatusCode"]
    assert body["code"] == real["ResponseBody"]["code"] == code
    assert_same_keys(real["ResponseBody"], body, f"{code} body")
    assert metadata_fragment(body) == metadata_fragment(real["ResponseBody"])
    endpoint = urlsplit(emulated.request.url)
    assert body["odata.metadata"].startswith(f"{endpoint.scheme}://{endpoint.netloc}/$metadata#"), "absolute"
    assert body["message"]["lang"] == "en-US"
    first_line, request_id, when = body["message"]["value"].split("\n")
    assert first_line == real["ResponseBody"]["message"]["value"].split("\n")[0]
    assert request_id == f"RequestId:{emulated.headers['request-id']}"
    assert TIMESTAMP.match(when.removeprefix("Time:"))
    assert_same_headers(real["ResponseHeaders"], emulated.headers, f"{code} headers")
    assert "Content-Length" in emulated.headers, "error bodies are sent with Content-Length"


async def test_error_answers_match_the_service(batch: BatchClient, captured: Captured) -> None:
    with pytest.raises(HttpResponseError):
        await batch.get_pool("non-existent-pool-id")
    real = recorded("exception_policy_async_", 0, "GET", "/pools/non-existent-pool-id")
    assert_error_matches(real, captured.last("GET", "/pools/non-existent-pool-id"), "PoolNotFound")

    with pytest.raises(HttpResponseError):
        await batch.create_pool(
            m.BatchPoolCreateOptions(
                id="batch_network_",
                vm_size="standard_d2_v2",
                virtual_machine_configuration=UBUNTU,
                task_slots_per_node=0,
            )
        )
    real = recorded("create_pools_async_", 2, "POST", "/pools")
    emulated = captured.last("POST", "/pools")
    assert_error_matches(real, emulated, "InvalidPropertyValue")
    keys = [v["key"] for v in emulated.json()["values"]]
    assert keys == [v["key"] for v in real["ResponseBody"]["values"]] == ["PropertyName", "PropertyValue", "Reason"]


# --- behaviours the scheduler and model own ----------------------------------------------------------------------


async def test_a_completed_job_keeps_its_state_before_terminating_as_previous(
    batch: BatchClient, captured: Captured
) -> None:
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    options: Any = {"terminateReason": "UserTerminate"}
    await (await batch.begin_terminate_job("j", options, polling_interval=0.05)).result()
    await batch.get_job("j")
    real = recorded("jobs_async_", 17, "GET", "/jobs/batch_job1_")["ResponseBody"]
    body = captured.body("GET", "/jobs/j")
    assert (body["state"], body["previousState"]) == (real["state"], real["previousState"]) == ("completed", "active")


async def test_stop_resize_passes_through_stopping(batch: BatchClient) -> None:
    await steady_pool(batch, "p", 0)
    await batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=2), polling_interval=0.05)
    await batch.begin_stop_pool_resize("p", polling_interval=0.05)
    states = {(await batch.get_pool("p")).allocation_state}
    real = [e["ResponseBody"]["allocationState"] for e in _entries("scale_pools_async_")[15:32]]
    assert set(real) == {"stopping"} and "stopping" in states


async def test_a_deleting_pool_is_resizing(batch: BatchClient, captured: Captured) -> None:
    await steady_pool(batch, "p", 1)
    await batch.begin_delete_pool("p", polling_interval=0.05)
    await batch.get_pool("p")
    real = recorded("update_pools_async_", 7, "GET", "/pools/batch_paas_")["ResponseBody"]
    assert captured.body("GET", "/pools/p")["allocationState"] == real["allocationState"] == "resizing"


async def test_resize_stopped_message(batch: BatchClient, captured: Captured) -> None:
    await steady_pool(batch, "p", 0)
    await batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_low_priority_nodes=2), polling_interval=0.05)
    await (await batch.begin_stop_pool_resize("p", polling_interval=0.05)).result()
    await batch.get_pool("p")
    real = recorded("scale_pools_async_", 33, "GET", "/pools/scalepool")["ResponseBody"]["resizeErrors"]
    assert captured.body("GET", "/pools/p")["resizeErrors"] == real


async def test_a_node_that_ran_a_task_lists_recent_tasks(batch: BatchClient, captured: Captured) -> None:
    # The specification: recentTasks "is present only if at least one Task has run on this Compute Node".
    await steady_pool(batch, "p", 1)
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))

    async def done() -> bool:
        return (await batch.get_task("j", "t")).state == m.BatchTaskState.COMPLETED

    await until(done)
    nodes = [n async for n in batch.list_nodes("p")]
    assert nodes[0].recent_tasks and nodes[0].recent_tasks[0].task_id == "t"
