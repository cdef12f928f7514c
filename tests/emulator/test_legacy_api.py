"""Clients that speak older api-versions, as the 14.x SDK (msrest) did: api-version ``2024-02-01.19.0``, and a
Shared Key signature over lower-cased query names.

What the REST API specification says for that version decides the answers: its addtaskcollection statuses are
``success`` / ``clienterror`` / ``servererror``, the same spelling as 2025-06-01 (``clientError`` appears only as the
enum's *name* in the swagger, never on the wire), and its node counts know no ``deallocated`` / ``deallocating``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch.emulator import Emulator

from ._shared_key import send

pytestmark = pytest.mark.anyio

LEGACY = "2024-02-01.19.0"
POOL = {
    "id": "p",
    "vmSize": "standard_d2s_v3",
    "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
    },
}


@pytest.fixture
async def legacy(batch_emulator: Emulator) -> AsyncIterator[Any]:
    """``send`` bound to the emulator's account, signing as the 14.x SDK did (query names lower-cased)."""
    async with aiohttp.ClientSession() as session:
        yield partial(
            send,
            session,
            account=batch_emulator.account_name,
            key=batch_emulator.credential.named_key.key,
            lower_query_names=True,
        )


def url(emu: Emulator, path: str, query: str = "") -> str:
    return f"{emu.endpoint}{path}?api-version={LEGACY}" + (f"&{query}" if query else "")


async def test_legacy_signed_requests_are_accepted(legacy: Any, batch_emulator: Emulator) -> None:
    status, headers, _ = await legacy("POST", url(batch_emulator, "/pools"), body=POOL)
    assert status == 201 and headers["ETag"]
    status, _, pool = await legacy("GET", url(batch_emulator, "/pools/p"))
    assert status == 200 and pool["id"] == "p" and pool["taskSlotsPerNode"] == 1
    # A parameter whose name has capitals is where the two signing styles differ: 14.x lower-cased it.
    status, _, listed = await legacy("GET", url(batch_emulator, "/pools", "timeOut=30&$select=id"))
    assert status == 200 and listed["value"] == [{"id": "p"}]
    status, _, _ = await legacy("GET", url(batch_emulator, "/pools", "timeOut=30"), lower_query_names=False)
    assert status == 200, "the 15.x style (names kept as sent) is accepted as well"


async def test_legacy_task_collection_statuses_use_the_spec_spelling(legacy: Any, batch_emulator: Emulator) -> None:
    status, _, _ = await legacy("POST", url(batch_emulator, "/jobs"), body={"id": "j", "poolInfo": {"poolId": "p"}})
    assert status == 201
    tasks = {"value": [{"id": "a", "commandLine": "/bin/true"}, {"id": "b", "commandLine": "/bin/true"}]}
    status, _, body = await legacy("POST", url(batch_emulator, "/jobs/j/addtaskcollection"), body=tasks)
    assert status == 200
    assert sorted((r["taskId"], r["status"]) for r in body["value"]) == [("a", "success"), ("b", "success")]

    again = {"value": [{"id": "A", "commandLine": "/bin/true"}, {"id": "c", "commandLine": "/bin/true"}]}
    status, _, body = await legacy("POST", url(batch_emulator, "/jobs/j/addtaskcollection"), body=again)
    results = {r["taskId"]: r for r in body["value"]}
    assert results["A"]["status"] == "clienterror"  # 2024-02-01.19.0's TaskAddStatus value, as in every version
    assert results["A"]["error"]["code"] == "TaskExists"
    assert results["c"]["status"] == "success"


async def test_legacy_paging_keeps_the_api_version_and_node_counts_have_the_legacy_shape(
    legacy: Any, batch_emulator: Emulator
) -> None:
    await legacy("POST", url(batch_emulator, "/pools"), body=POOL)
    await legacy("POST", url(batch_emulator, "/jobs"), body={"id": "j", "poolInfo": {"poolId": "p"}})
    tasks = {"value": [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(5)]}
    await legacy("POST", url(batch_emulator, "/jobs/j/addtaskcollection"), body=tasks)
    seen: list[str] = []
    next_url: str | None = url(batch_emulator, "/jobs/j/tasks", "maxresults=2&$select=id")
    while next_url:
        status, _, page = await legacy("GET", next_url)
        assert status == 200
        seen.extend(t["id"] for t in page["value"])
        next_url = page.get("odata.nextLink")
        assert next_url is None or f"api-version={LEGACY}" in next_url
    assert seen == [f"t{i}" for i in range(5)]

    status, _, counts = await legacy("GET", url(batch_emulator, "/nodecounts"))
    assert status == 200
    dedicated = counts["value"][0]["dedicated"]
    assert "deallocated" not in dedicated and "deallocating" not in dedicated, "2024-02-01.19.0 has no deallocation"
    assert {"creating", "idle", "startTaskFailed", "upgradingOS", "waitingForStartTask", "total"} <= set(dedicated)


async def test_the_current_sdk_pinned_to_the_legacy_version_works(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential, api_version=LEGACY) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        result = await batch.create_task_collection(
            "j",
            m.BatchTaskGroup(
                task_values=[
                    m.BatchTaskCreateOptions(id="x", command_line="/bin/true"),
                    m.BatchTaskCreateOptions(id="X", command_line="/bin/true"),
                ]
            ),
        )
        statuses = sorted(r.status for r in result.result_values or [])
        assert statuses == [m.BatchTaskAddStatus.CLIENT_ERROR, m.BatchTaskAddStatus.SUCCESS]
        assert [t.id async for t in batch.list_tasks("j")] == ["x"]  # "X" duplicates it, case-insensitively


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("api-version=2019-08-01.10.0", "InvalidQueryParameterValue"),  # older than the emulator speaks
        ("api-version=latest", "InvalidQueryParameterValue"),
        ("", "MissingRequiredQueryParameter"),
    ],
)
async def test_unknown_or_missing_api_versions_are_refused(
    legacy: Any, batch_emulator: Emulator, query: str, code: str
) -> None:
    status, _, body = await legacy("GET", f"{batch_emulator.endpoint}/pools" + (f"?{query}" if query else ""))
    assert status == 400
    assert body["code"] == code
    assert {v["key"]: v["value"] for v in body["values"]}["QueryParameterName"] == "api-version"
