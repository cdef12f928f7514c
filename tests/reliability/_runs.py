"""Helpers shared by the reliability tests of clauses 1-4, 6 and 7: emulators, pools, faults and inventories.

The oracle is always a server's own record -- the emulator's account (what exists, what it committed and
deleted, ``ledger.requests``) and Azurite's container listing -- never what the client says it did.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from aiobatch import BatchSettings, Client, ConflictError, PoolSpec, RetryPolicy, StorageSettings
from aiobatch._retry import call, sdk_client_kwargs
from aiobatch.emulator import FAULT_HEADER, Emulator, FaultPlan, Timings
from aiobatch.emulator._model import Account

#: Allocation, boot and deletion in tens of milliseconds: readiness is waited for for real, but briefly.
QUICK = Timings(allocation_delay=0.05, node_start_delay=0.02, deletion_delay=0.02, node_recovery_delay=0.2)

#: Every request-level fault kind the emulator has, at rates that add up to 20% of requests.
MIXED_REQUEST_FAULTS = {
    "429": 0.025,
    "503": 0.025,
    "503-bare": 0.025,
    "partial-500": 0.03,
    "latency": 0.02,
    "reset-before": 0.025,
    "reset-after": 0.025,
    "truncate": 0.025,
}


def pool_spec(pool_id: str, *, dedicated: int = 1, spot: int = 0, slots: int = 4, **options: Any) -> PoolSpec:
    """A small Linux pool (2 cores a node)."""
    return PoolSpec(
        id=pool_id,
        vm_size="standard_d2s_v3",
        image_publisher="canonical",
        image_offer="ubuntu-24_04-lts",
        image_sku="server",
        node_agent_sku_id="batch.node.ubuntu 24.04",
        dedicated_nodes=dedicated,
        spot_nodes=spot,
        task_slots_per_node=slots,
        **options,
    )


def patient_policy(seed: int | str, *, attempts: int = 12, deadline: float = 60.0) -> RetryPolicy:
    """Quick waits but many attempts: under 20% faults a request must outlast long runs of bad luck."""
    return RetryPolicy(
        attempts=attempts, deadline=deadline, initial=0.01, maximum=0.1, jitter=0.02, rng=random.Random(seed)
    )


def arm(emulator: Emulator, plan: FaultPlan) -> None:
    """Start injecting *plan* into a running emulator (its RNG re-seeded from the plan); the ledger stays."""
    emulator.faults.plan = plan
    emulator.faults.rng = random.Random(plan.seed)


def aim(emulator: Emulator, where: str | Callable[[Any], bool], kinds: Iterable[str]) -> deque[str]:
    """Give the next requests *where* matches one fault each from *kinds*, in order; return what is left to give.

    *where* is a part of ``"METHOD /path"`` or a predicate on the aiohttp request (to aim at, say, the pages
    an ``odata.nextLink`` leads to). The same as a test sending the ``x-aiobatch-fault`` header on those
    requests, for requests a client makes on its own: a random plan alone may, by chance, never draw a kind on
    the few requests of a CI-sized run. After *kinds* run out, the plan's random draws go on as before.
    """
    faults = emulator.faults
    queue = deque(kinds)
    draw = faults.choose

    def matches(request: Any) -> bool:
        if isinstance(where, str):
            return where in f"{request.method} {request.path}"
        return where(request)

    def choose(request: Any) -> tuple[str | None, Mapping[str, str]]:
        if queue and FAULT_HEADER not in request.headers and matches(request):
            kind = queue.popleft()
            return kind, ({"rate": str(faults.plan.task_error_rate)} if kind == "task-error" else {})
        return draw(request)

    faults.choose = choose  # type: ignore[method-assign]
    return queue


def disarm(emulator: Emulator) -> None:
    """Stop injecting faults (the ledger keeps what was injected)."""
    emulator.faults.plan = FaultPlan()


def account_of(emulator: Emulator) -> Account:
    """The emulator's account model (the server's state)."""
    assert emulator.account is not None, "the emulator is not running"
    return emulator.account


def client(emulator: Emulator, connection_string: str, **options: Any) -> Client:
    """An unopened `Client` for the emulator and a storage account."""
    batch = BatchSettings(
        endpoint=emulator.endpoint,
        account_name=emulator.account_name,
        account_key=emulator.credential.named_key.key,
    )
    return Client(batch, StorageSettings(connection_string=connection_string), **options)


def raw_batch(emulator: Emulator) -> BatchClient:
    """A plain SDK client with azure-core's retries off: "someone else" sharing the account."""
    return BatchClient(emulator.endpoint, emulator.credential, **sdk_client_kwargs())


async def add_foreign_task(emulator: Emulator, job_id: str, task_id: str, policy: RetryPolicy) -> None:
    """Add a task the run under test did not create (as another user or process would), faults or not."""
    from azure.batch import models

    async with raw_batch(emulator) as batch:
        try:
            await call(
                lambda: batch.create_task(job_id, models.BatchTaskCreateOptions(id=task_id, command_line="/bin/true")),
                policy=policy,
                resource="task",
                resource_id=task_id,
            )
        except ConflictError as exc:  # a retry of ours whose first answer was lost
            if exc.code != "TaskExists":
                raise


def task_commits(account: Account, job_id: str) -> Counter[str]:
    """Committed creates per task of one job, by the account's own count (lower-cased task ids)."""
    prefix = f"{job_id.lower()}/"
    created = account.created.items()
    return Counter({key[len(prefix) :]: n for (kind, key), n in created if kind == "task" and key.startswith(prefix)})


@dataclass(frozen=True)
class Inventory:
    """Everything the Batch account and the storage account hold: the servers' view."""

    pools: frozenset[str]
    jobs: frozenset[str]
    running: frozenset[str]
    containers: frozenset[str]

    def minus(self, before: Inventory) -> Inventory:
        """What is here and was not in *before*."""
        return Inventory(
            self.pools - before.pools,
            self.jobs - before.jobs,
            self.running - before.running,
            self.containers - before.containers,
        )

    @property
    def empty(self) -> bool:
        """Whether it holds nothing."""
        return not (self.pools or self.jobs or self.running or self.containers)


async def inventory(emulator: Emulator, connection_string: str) -> Inventory:
    """Take stock of the emulator's account (its model) and of every container in the storage account."""
    account = account_of(emulator)
    async with BlobServiceClient.from_connection_string(connection_string) as service:
        containers = frozenset([c.name async for c in service.list_containers()])
    return Inventory(
        pools=frozenset(account.pools),
        jobs=frozenset(account.jobs),
        running=frozenset(
            f"{job}/{task}"
            for pool in account.pools.values()
            for node in pool.nodes.values()
            for job, task in node.running
        ),
        containers=containers,
    )


def ids(prefix: str, n: int) -> list[str]:
    """*n* task ids, distinct case-insensitively."""
    return [f"{prefix}-{i:05d}" for i in range(n)]


def lower(values: Iterable[str]) -> set[str]:
    """Lower-cased set (Batch ids compare case-insensitively)."""
    return {v.lower() for v in values}
