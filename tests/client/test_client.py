"""Client lifecycle, configuration, cleanup (normal exit, error, cancellation, Ctrl-C) and an end-to-end run."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.storage.blob.aio import BlobServiceClient

import aiobatch._client
import aiobatch._storage
from _support import FAST_RETRY
from aiobatch import (
    AiobatchError,
    BatchSettings,
    Client,
    ConfigurationError,
    ConflictError,
    PoolSpec,
    StorageSettings,
    TaskSpec,
    command_line,
    output_files_to,
    resource_file,
)
from aiobatch._azurite import AzuriteServer
from aiobatch._faultproxy import StorageFaultProxy
from aiobatch.emulator import Emulator, FaultPlan

pytestmark = pytest.mark.anyio

#: Fast retries for tests: a fault costs milliseconds, not seconds.
FAST = FAST_RETRY
OK = "/bin/sh -c 'exit 0'"


def make_client(emulator: Emulator, azurite: AzuriteServer, **options: Any) -> Client:
    """A client for the emulator and Azurite (used by the other client test modules too)."""
    options.setdefault("retry_policy", FAST)
    return Client(
        BatchSettings(
            endpoint=emulator.endpoint,
            account_name=emulator.account_name,
            account_key=emulator.credential.named_key.key,
        ),
        StorageSettings(connection_string=azurite.connection_string),
        **options,
    )


def pool_spec(pool_id: str = "pool-1", nodes: int = 1, **options: Any) -> PoolSpec:
    """A small Linux pool spec."""
    return PoolSpec(
        id=pool_id,
        vm_size="standard_d2s_v3",
        image_publisher="canonical",
        image_offer="ubuntu-24_04-lts",
        image_sku="server",
        node_agent_sku_id="batch.node.ubuntu 24.04",
        dedicated_nodes=nodes,
        **options,
    )


def tasks(n: int, command: str = OK, prefix: str = "t", **options: Any) -> list[TaskSpec]:
    return [TaskSpec(id=f"{prefix}{i:05d}", command_line=command, **options) for i in range(n)]


async def container_exists(azurite: AzuriteServer, name: str) -> bool:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return bool(await service.get_container_client(name).exists())


def gone_or_deleting(entities: dict[str, Any], entity_id: str) -> bool:
    entity = entities.get(entity_id.lower())
    return entity is None or entity.state == "deleting"


# ----------------------------------------------------------------------------------------------------
# Lifecycle and configuration
# ----------------------------------------------------------------------------------------------------


async def test_lifecycle_unopened_open_closed(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    client = make_client(batch_emulator, azurite)
    # Each state is read into its own name: asserting on `client.state` would narrow its type for mypy.
    initial = client.state
    assert initial == "unopened"
    with pytest.raises(RuntimeError, match="not open yet"):
        await client.ensure_container("never")
    async with client as same:
        opened = client.state
        assert same is client and opened == "open"
        with pytest.raises(RuntimeError, match="opened only once"):
            await client.open()
    assert client.state == "closed"
    await client.aclose()
    await client.aclose()  # safe twice
    with pytest.raises(RuntimeError, match="closed"):
        client.watch_tasks("job")
    with pytest.raises(RuntimeError, match="opened only once"):
        async with client:
            pass


async def test_aclose_of_unopened_client_is_a_no_op(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    client = make_client(batch_emulator, azurite)
    await client.aclose()
    assert client.state == "closed"


async def test_an_unclosed_client_that_created_resources_warns_with_the_cleanup_command(
    batch_emulator: Emulator, azurite: AzuriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(batch_emulator, azurite, run_id="forgotten", cleanup=True).open()
    await client.ensure_pool(pool_spec("forgotten-pool"))
    await client.ensure_container("forgotten-box")
    stack = client._stack  # the SDK clients, closed by hand below once the warning is seen
    try:
        with pytest.warns(ResourceWarning) as caught:
            del client
            gc.collect()
    finally:
        await stack.aclose()
    [warning] = [w for w in caught if "aiobatch Client" in str(w.message)]
    message = str(warning.message)
    assert "unclosed aiobatch Client (run 'forgotten')" in message
    assert "pools forgotten-pool" in message and "containers forgotten-box" in message
    assert message.endswith("aiobatch cleanup --run-id forgotten")
    # ResourceWarning is hidden outside tests: a leak that costs money is logged as well.
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "aiobatch"] == [
        message
    ]
    # Only a warning: nothing was deleted behind the user's back (a finalizer does no I/O).
    assert batch_emulator.account is not None and "forgotten-pool" in batch_emulator.account.pools


async def test_a_closed_or_never_opened_client_does_not_warn(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_container("closed-properly")
    never = make_client(batch_emulator, azurite)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del client, never
        gc.collect()


async def test_from_env_reaches_the_emulator_and_azurite(
    batch_emulator: Emulator, azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_BATCH_ENDPOINT", batch_emulator.endpoint)
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_NAME", batch_emulator.account_name)
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_KEY", batch_emulator.credential.named_key.key)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    async with Client.from_env(run_id="env-run", retry_policy=FAST) as client:
        assert client.run_id == "env-run"
        ref = await client.ensure_pool(pool_spec("env-pool"))
        assert ref.created
        assert await client.ensure_container("from-env") in (True, False)


def test_from_env_names_the_missing_variable() -> None:
    with pytest.raises(ConfigurationError, match="AZURE_BATCH_ENDPOINT"):
        Client.from_env({})


class RecordingCredential:
    """An async token credential that counts its ``close()`` calls; no test here asks it for a token."""

    def __init__(self) -> None:
        self.closed = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise AssertionError("opening and closing a client must not ask for a token")

    async def close(self) -> None:
        self.closed += 1

    async def __aenter__(self) -> RecordingCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@pytest.fixture
def entra_env(monkeypatch: pytest.MonkeyPatch) -> list[RecordingCredential]:
    """Both services by URL with no key (Entra ID); returns the default credentials the client makes."""
    monkeypatch.setenv("AZURE_BATCH_ENDPOINT", "https://pets.westeurope.batch.azure.com")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", "https://pets.blob.core.windows.net")
    made: list[RecordingCredential] = []

    def default_credential() -> RecordingCredential:
        made.append(RecordingCredential())
        return made[-1]

    # Looked up where `Client.open` calls it: the name `_client` imported from `_config`.
    monkeypatch.setattr(aiobatch._client, "default_credential", default_credential)
    return made


def credentials_of(client: Client) -> tuple[object, object]:
    """The credentials the Batch and Blob SDK clients sign with."""
    return client.batch._config.credential, client.blob_service.credential


async def test_without_keys_one_default_credential_serves_both_and_is_closed_once(
    entra_env: list[RecordingCredential],
) -> None:
    async with Client.from_env() as client:
        assert len(entra_env) == 1
        (credential,) = entra_env
        batch_credential, blob_credential = credentials_of(client)
        assert batch_credential is credential and blob_credential is credential
        assert credential.closed == 0
    assert credential.closed == 1
    await client.aclose()  # a second close closes nothing twice
    assert credential.closed == 1


async def test_the_default_credential_is_closed_when_opening_fails_half_way(
    entra_env: list[RecordingCredential], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> BlobServiceClient:
        raise ConfigurationError("storage could not be set up", setting="AZURE_STORAGE_ACCOUNT_URL")

    # The Batch client is open by the time storage fails: both it and the credential must be closed.
    monkeypatch.setattr(aiobatch._storage, "blob_service_client", broken)
    client = Client.from_env()
    with pytest.raises(ConfigurationError, match="storage could not be set up"):
        await client.open()
    assert client.state == "closed"
    assert [c.closed for c in entra_env] == [1]


async def test_a_default_credential_for_storage_alone_when_batch_has_a_key(
    entra_env: list[RecordingCredential], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_NAME", "pets")
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_KEY", "a2V5a2V5a2V5")
    async with Client.from_env() as client:
        batch_credential, blob_credential = credentials_of(client)
        assert isinstance(batch_credential, AzureNamedKeyCredential)
        assert entra_env and blob_credential is entra_env[0]
    assert [c.closed for c in entra_env] == [1]


async def test_with_keys_for_both_no_default_credential_is_made(
    entra_env: list[RecordingCredential], monkeypatch: pytest.MonkeyPatch, azurite: AzuriteServer
) -> None:
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_NAME", "pets")
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_KEY", "a2V5a2V5a2V5")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    async with Client.from_env():
        pass
    assert entra_env == []


async def test_a_credential_passed_in_serves_both_and_stays_the_callers(
    entra_env: list[RecordingCredential], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = RecordingCredential()
    async with Client.from_env(credential=mine) as client:
        batch_credential, blob_credential = credentials_of(client)
        assert batch_credential is mine and blob_credential is mine
    assert entra_env == []  # no default credential is made
    assert mine.closed == 0  # the caller's to close, and still usable

    def broken(*args: Any, **kwargs: Any) -> BlobServiceClient:
        raise ConfigurationError("storage could not be set up", setting="AZURE_STORAGE_ACCOUNT_URL")

    monkeypatch.setattr(aiobatch._storage, "blob_service_client", broken)
    with pytest.raises(ConfigurationError):
        await Client.from_env(credential=mine).open()
    assert mine.closed == 0  # not even when opening fails


async def test_run_id_generated_given_or_refused(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    a, b = make_client(batch_emulator, azurite), make_client(batch_emulator, azurite)
    assert a.run_id != b.run_id
    assert make_client(batch_emulator, azurite, run_id="my-run_1").run_id == "my-run_1"
    with pytest.raises(ConfigurationError, match="run id"):
        make_client(batch_emulator, azurite, run_id="bad run!")


async def test_repr_shows_no_secret(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    client = make_client(batch_emulator, azurite)
    text = repr(client)
    assert batch_emulator.credential.named_key.key not in text
    assert azurite.account_key not in text
    assert client.run_id in text


async def test_a_wrong_account_key_is_an_authentication_error(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    from aiobatch import AuthenticationError

    wrong = Client(
        BatchSettings(
            endpoint=batch_emulator.endpoint, account_name=batch_emulator.account_name, account_key="d3Jvbmcga2V5"
        ),
        StorageSettings(connection_string=azurite.connection_string),
        retry_policy=FAST,
    )
    async with wrong as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.ensure_pool(pool_spec("p"))
    assert "d3Jvbmcga2V5" not in str(caught.value)


async def test_works_inside_a_running_loop_without_asyncio_run(
    batch_emulator: Emulator, azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("aiobatch must never call asyncio.run")

    monkeypatch.setattr(asyncio, "run", forbidden)
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(pool_spec())
        await client.wait_for_pool_ready("pool-1", poll_interval=0.05, timeout=10)


# ----------------------------------------------------------------------------------------------------
# Cleanup
# ----------------------------------------------------------------------------------------------------


async def _create_everything(client: Client, suffix: str) -> None:
    await client.ensure_container(f"cleanup-{suffix}")
    await client.ensure_pool(pool_spec(f"pool-{suffix}"))
    await client.create_job(f"job-{suffix}", pool_id=f"pool-{suffix}")


def _assert_cleaned(emulator: Emulator, suffix: str) -> None:
    assert emulator.account is not None
    assert gone_or_deleting(emulator.account.jobs, f"job-{suffix}")
    assert gone_or_deleting(emulator.account.pools, f"pool-{suffix}")


async def test_cleanup_on_normal_exit(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        await _create_everything(client, "normal")
        assert client.created == {"jobs": ("job-normal",), "pools": ("pool-normal",), "containers": ("cleanup-normal",)}
    _assert_cleaned(batch_emulator, "normal")
    assert not await container_exists(azurite, "cleanup-normal")


async def test_cleanup_on_error(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    with pytest.raises(ZeroDivisionError):
        async with make_client(batch_emulator, azurite, cleanup=True) as client:
            await _create_everything(client, "error")
            1 / 0  # noqa: B018
    _assert_cleaned(batch_emulator, "error")
    assert not await container_exists(azurite, "cleanup-error")


async def test_cleanup_on_cancellation(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    created = anyio.Event()
    with anyio.CancelScope() as scope:

        async def cancel_when_created() -> None:
            await created.wait()
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_created)
            async with make_client(batch_emulator, azurite, cleanup=True) as client:
                await _create_everything(client, "cancel")
                created.set()
                await anyio.sleep(30)  # cancelled here
    assert scope.cancelled_caught
    _assert_cleaned(batch_emulator, "cancel")
    assert not await container_exists(azurite, "cleanup-cancel")


async def test_cleanup_on_ctrl_c(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    with pytest.raises(KeyboardInterrupt):
        async with make_client(batch_emulator, azurite, cleanup=True) as client:
            await _create_everything(client, "ctrlc")
            raise KeyboardInterrupt
    _assert_cleaned(batch_emulator, "ctrlc")
    assert not await container_exists(azurite, "cleanup-ctrlc")


async def test_cleanup_is_bounded_by_its_timeout(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    client = make_client(batch_emulator, azurite, cleanup=True, cleanup_timeout=0.001)
    async with client:
        await _create_everything(client, "slow")
        # A millisecond is too short for three deletes: the deadline passes first, and says so.
        with pytest.raises(AiobatchError, match="did not finish within"):
            await client.aclose()
    assert client.state == "closed"


#: How long the hung service takes over each delete: far past any cleanup timeout below.
HUNG = 30.0
#: What closing may take beyond *cleanup_timeout*: cancelling the hung request and closing both SDK clients.
CLOSE_SLACK = 1.5


def _serving(task: asyncio.Task[Any]) -> bool:
    """Whether *task* is the emulator's aiohttp server handling a connection (such as a hung delete)."""
    return getattr(task.get_coro(), "__qualname__", "").startswith("RequestHandler.")


def _pending_since(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]


@pytest.fixture
async def hung_deletes(batch_emulator: Emulator) -> AsyncIterator[Emulator]:
    """The emulator, taking `HUNG` seconds over every DELETE of a job or pool (nothing else is slowed).

    Its handlers keep sleeping after the client gives up (as the service would keep working), so they are
    ended on the way out: the emulator's shutdown need not wait them out.
    """
    before = asyncio.all_tasks()
    batch_emulator.faults.plan = FaultPlan(
        rates={"latency": 1.0}, latency=HUNG, operations=("DELETE /jobs", "DELETE /pools")
    )
    batch_emulator.faults.rng = random.Random(0)
    yield batch_emulator
    handlers = [t for t in _pending_since(before) if _serving(t)]
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


async def test_cleanup_is_bounded_when_the_service_hangs_on_deletes(
    hung_deletes: Emulator, azurite: AzuriteServer
) -> None:
    client = make_client(hung_deletes, azurite, cleanup=True, cleanup_timeout=2.0)
    before = asyncio.all_tasks()
    with pytest.raises(AiobatchError) as caught:
        async with client:
            await _create_everything(client, "hung")
            started = anyio.current_time()
    elapsed = anyio.current_time() - started
    assert 2.0 <= elapsed < 2.0 + CLOSE_SLACK, f"closing took {elapsed:.2f} s"
    # It says the time ran out, and names the run and all that is still there (the job's delete hung, so the
    # pool and the container were never reached): enough to finish by hand, or with a sweep.
    message = str(caught.value)
    assert "did not finish within 2 s" in message
    assert f"aiobatch cleanup --run-id {client.run_id}" in message
    assert "jobs job-hung; pools pool-hung; containers cleanup-hung" in message
    assert client.state == "closed"
    assert client.created == {"jobs": ("job-hung",), "pools": ("pool-hung",), "containers": ("cleanup-hung",)}
    assert hung_deletes.faults.ledger.injected["latency"] == 1  # one delete sent, hung, then abandoned
    left_running = [t for t in _pending_since(before) if not _serving(t)]
    assert left_running == [], f"the client left tasks running: {left_running}"


async def test_ctrl_c_while_deletes_hang_is_bounded_and_re_raised(
    hung_deletes: Emulator, azurite: AzuriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(hung_deletes, azurite, cleanup=True, cleanup_timeout=2.0)
    before = asyncio.all_tasks()
    with caplog.at_level(logging.WARNING, logger="aiobatch"), pytest.raises(KeyboardInterrupt):
        async with client:
            await _create_everything(client, "hungc")
            started = anyio.current_time()
            raise KeyboardInterrupt
    elapsed = anyio.current_time() - started
    assert 2.0 <= elapsed < 2.0 + CLOSE_SLACK, f"closing took {elapsed:.2f} s"
    # Ctrl-C goes on (not swapped for a cleanup error); what it left is logged, with the run id.
    left = [r.getMessage() for r in caplog.records if f"cleanup of run {client.run_id!r} left" in r.getMessage()]
    assert len(left) == 1 and "jobs job-hungc; pools pool-hungc; containers cleanup-hungc" in left[0]
    assert client.state == "closed"
    left_running = [t for t in _pending_since(before) if not _serving(t)]
    assert left_running == [], f"the client left tasks running: {left_running}"


async def test_cleanup_leaves_what_this_run_did_not_create(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(
            m.BatchPoolCreateOptions(
                id="foreign",
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=m.VirtualMachineConfiguration(
                    image_reference=m.BatchVmImageReference(
                        publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
                    ),
                    node_agent_sku_id="batch.node.ubuntu 24.04",
                ),
                target_dedicated_nodes=1,
            )
        )
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        ref = await client.ensure_pool(pool_spec("foreign"), reuse_existing=True)
        assert not ref.owned
        await client.create_job("job-on-foreign", pool_id="foreign")
        with pytest.raises(ConflictError, match="force=True"):
            await client.delete_pool("foreign")
    assert batch_emulator.account is not None
    assert batch_emulator.account.pools["foreign"].state == "active"
    assert gone_or_deleting(batch_emulator.account.jobs, "job-on-foreign")


async def test_no_cleanup_by_default(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _create_everything(client, "kept")
    assert batch_emulator.account is not None
    assert batch_emulator.account.pools["pool-kept"].state == "active"
    assert await container_exists(azurite, "cleanup-kept")


# ----------------------------------------------------------------------------------------------------
# End to end: upload (re-run uploads nothing), pool, job, tasks with files, events, outputs
# ----------------------------------------------------------------------------------------------------


async def test_end_to_end_with_files(batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = ["a cat.txt", "dög's.txt", "50% & more.txt"]
    for i, name in enumerate(names):
        (inputs / name).write_text(f"file {i}\n" * (i + 1))
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        uploaded = await client.upload_files("e2e-in", sorted(inputs.iterdir()))
        assert len(uploaded.uploaded) == 3
        again = await client.upload_files("e2e-in", sorted(inputs.iterdir()))
        assert (len(again.uploaded), len(again.skipped)) == (0, 3)

        await client.ensure_pool(pool_spec("e2e-pool", nodes=2))
        await client.wait_for_pool_ready("e2e-pool", poll_interval=0.05, timeout=20)
        await client.create_job("e2e", pool_id="e2e-pool", on_all_tasks_complete="terminatejob")
        out_url = await client.output_container_sas_url("e2e-out")
        specs = []
        for i, f in enumerate(uploaded.files):
            url = await client.input_sas_url("e2e-in", f.name)
            specs.append(
                TaskSpec(
                    id=f"copy{i}",
                    command_line=command_line(["cp", f.name, f"out-{i}.txt"]),
                    resource_files=[resource_file(url)],
                    output_files=[output_files_to(out_url, f"out-{i}.txt", path=f"out-{i}.txt")],
                )
            )
        result = await client.submit_tasks("e2e", specs)
        assert result.ok and len(result.added) == 3
        summary = await client.wait_for_tasks("e2e", timeout=30, poll_interval=0.05, max_poll_interval=0.2)
        assert (summary.completed, summary.succeeded, summary.failed) == (3, 3, ())
        downloaded = await client.download_outputs("e2e-out", tmp_path / "out")
        got = sorted(p.name for p in (tmp_path / "out").iterdir())
        assert got == ["out-0.txt", "out-1.txt", "out-2.txt"]
        assert len(downloaded.files) == 3
        by_index = {i: (inputs / f.name).read_text() for i, f in enumerate(uploaded.files)}
        for i, text in by_index.items():
            assert (tmp_path / "out" / f"out-{i}.txt").read_text() == text
        assert batch_emulator.account is not None
        # terminatejob was applied after the submission: the job ends by itself.
        assert batch_emulator.account.jobs["e2e"].state in ("terminating", "completed")
    assert not await container_exists(azurite, "e2e-in")
    assert not await container_exists(azurite, "e2e-out")


async def test_upload_files_creates_its_container_with_one_request(
    batch_emulator: Emulator, storage_faults: StorageFaultProxy, tmp_path: Path
) -> None:
    """The container is made (and tagged) once: no second create that only meets ContainerAlreadyExists."""
    (tmp_path / "a.txt").write_text("a")
    async with make_client(batch_emulator, storage_faults) as client:  # type: ignore[arg-type]
        storage_faults.reset_counts()
        result = await client.upload_files("one-create", [tmp_path / "a.txt"])
    assert [f.name for f in result.uploaded] == ["a.txt"]
    assert storage_faults.forwarded["PUT"] == 2  # the container, then the blob
