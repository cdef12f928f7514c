"""convert_pets.py's exit status 2 for setup errors: an unreachable Batch or Storage endpoint, named, no secret."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from types import ModuleType

import pytest

import aiobatch
from aiobatch import RetryPolicy
from aiobatch._retry import call

from .conftest import SCRIPT

pytestmark = pytest.mark.anyio

KEY = "a2V5a2V5a2V5"
STORAGE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_pets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def environ() -> dict[str, str]:
    port = closed_port()
    return {
        "AZURE_BATCH_ENDPOINT": f"http://127.0.0.1:{port}",
        "AZURE_BATCH_ACCOUNT_NAME": "devbatchaccount1",
        "AZURE_BATCH_ACCOUNT_KEY": KEY,
        "AZURE_STORAGE_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={STORAGE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        ),
    }


async def test_unreachable_services_are_setup_errors_naming_the_endpoint(
    environ: dict[str, str], tmp_path: Path
) -> None:
    script = load_script()
    args = script.parse_args(["--input", "in", "--output", "out"])
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    fast = RetryPolicy(attempts=2, deadline=2.0, initial=0.01, jitter=0.0)
    async with aiobatch.Client.from_env(environ, retry_policy=fast) as client:
        with pytest.raises(aiobatch.ServiceUnavailableError) as storage:
            await client.upload_files("pets-input", [video])
        with pytest.raises(aiobatch.ServiceUnavailableError) as batch:
            await call(lambda: client.batch.get_pool("p"), policy=fast, resource="pool", resource_id="p")

    storage_message = script.setup_error(storage.value, args, environ)
    batch_message = script.setup_error(batch.value, args, environ)
    assert storage_message is not None and batch_message is not None
    port = environ["AZURE_BATCH_ENDPOINT"].rsplit(":", 1)[1]
    assert f"cannot reach Blob Storage at http://127.0.0.1:{port}/devstoreaccount1" in storage_message
    assert "AZURE_STORAGE_CONNECTION_STRING" in storage_message
    assert f"cannot reach Batch at http://127.0.0.1:{port}" in batch_message
    assert "AZURE_BATCH_ENDPOINT" in batch_message
    for message in (storage_message, batch_message):
        assert "\n" not in message and KEY not in message and STORAGE_KEY not in message


def test_other_errors_keep_their_exit_status(environ: dict[str, str]) -> None:
    script = load_script()
    args = script.parse_args(["--input", "in", "--output", "out"])
    assert script.setup_error(aiobatch.ServiceUnavailableError("503s outlasted the policy"), args, environ) is None
    assert script.setup_error(aiobatch.PoolTimeoutError("slow", pool_id="p"), args, environ) is None
    missing = aiobatch.ConfigurationError("AZURE_BATCH_ENDPOINT is not set")
    assert script.setup_error(missing, args, environ) == "AZURE_BATCH_ENDPOINT is not set"
