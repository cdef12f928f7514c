"""The real azure-batch 14.x SDK (msrest, sync, api-version ``2024-02-01.19.0``) against the emulator.

14.x and the project's 15.x are one distribution, so 14.x cannot live in the test venv. As with Azurite, it is
installed on first use into a project-local folder (``.cache/azure-batch-14``, pinned, reused while its marker
names the pinned version), and ``_batch14_driver.py`` runs in a subprocess with that folder first on
``PYTHONPATH``. The driver asserts it imported 14.x, tours the emulator and prints a JSON summary; the tests
below each check one step of it, so a wire difference fails (or, once reported, xfails) that step alone.

Under ``CI=true`` a failed installation fails the tests; elsewhere (say, offline) they are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch.emulator import Emulator, Timings

SDK14 = "azure-batch==14.2.0"
DRIVER = Path(__file__).with_name("_batch14_driver.py")
MARKER = ".installed"


def install_sdk14(root: Path, timeout: float = 600.0) -> Path:
    """Return a folder holding ``SDK14`` and its dependencies, installing it there unless already done.

    pip installs into a staging folder beside the target, which is renamed into place only once complete and
    marked; so an interrupted install is never mistaken for a finished one, and a finished one is reused.

    Raises:
        RuntimeError: pip failed; the message carries its output.
    """
    target = root / ".cache" / "azure-batch-14"
    marker = target / MARKER
    if marker.is_file() and marker.read_text().strip() == SDK14:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".azure-batch-14-", dir=target.parent))
    try:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        # --no-warn-conflicts: pip would compare the target with the venv's 15.x and complain, which is the point.
        command += ["--no-warn-conflicts", "--target", str(staging), SDK14]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"`{' '.join(command)}` took more than {timeout:.0f} s") from exc
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        (staging / MARKER).write_text(SDK14 + "\n")
        shutil.rmtree(target, ignore_errors=True)  # unmarked or another version: ours to replace
        try:
            os.rename(staging, target)
        except OSError:
            # Another session finished first; its installation is as good as ours.
            if not (marker.is_file() and marker.read_text().strip() == SDK14):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="module")
def sdk14(request: pytest.FixtureRequest) -> Path:
    try:
        return install_sdk14(request.config.rootpath)
    except (OSError, RuntimeError) as exc:
        message = f"{SDK14} could not be installed into .cache/azure-batch-14: {exc}"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(f"{message}\n(needs PyPI once; with CI=true this fails instead of skipping)")


@pytest.fixture(scope="module")
def summary(sdk14: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the driver once against a fresh emulator and return what it printed."""
    return anyio.run(run_driver, sdk14, tmp_path_factory.mktemp("sdk14"))


async def run_driver(sdk14: Path, workdir: Path) -> dict[str, Any]:
    emulator = Emulator(
        workdir=workdir / "emulator",
        timings=Timings(allocation_delay=0.2, node_start_delay=0.1, deletion_delay=0.05),
    )
    async with emulator:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(sdk14), env.get("PYTHONPATH")]))
        env["BATCH14_ACCOUNT_KEY"] = emulator.credential.named_key.key  # not on the command line, where ps shows it
        command = [sys.executable, str(DRIVER), emulator.endpoint, emulator.account_name]
        # The driver blocks on its HTTP calls; run_process leaves this event loop free to answer them.
        with anyio.fail_after(180):
            done = await anyio.run_process(command, env=env, check=False)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"the 14.x driver failed ({done.returncode}):\n{stderr}\n{stdout}"
    result: dict[str, Any] = json.loads(stdout)
    return result


def step(summary: dict[str, Any], name: str) -> Any:
    """One step's result, failing with the driver's traceback if that step raised."""
    assert name in summary, f"the driver never reached {name!r} (stopped at {summary.get('stopped_at')!r})"
    value = summary[name]
    if isinstance(value, dict) and "error" in value:
        pytest.fail(f"step {name!r} raised under azure-batch 14.x:\n{value.get('traceback') or value['error']}")
    return value


def test_the_driver_ran_the_real_14x_sdk_at_its_own_api_version(summary: dict[str, Any]) -> None:
    assert summary["sdk_version"] == SDK14.split("==")[1]
    assert summary["api_version"] == "2024-02-01.19.0"
    assert "stopped_at" not in summary


def test_pool_is_created_and_its_node_goes_idle(summary: dict[str, Any]) -> None:
    assert step(summary, "create_pool") == {
        "id": "sdk14-pool",
        "vm_size": "standard_d2s_v3",
        "state": "active",
        "etag": True,
    }
    assert step(summary, "idle_node") == {
        "node_state": "idle",
        "allocation_state": "steady",
        "current_dedicated_nodes": 1,
    }
    assert step(summary, "node_counts") == {"dedicated_total": 1, "dedicated_idle": 1}


def test_job_and_tasks_are_added_one_by_one_and_as_a_collection(summary: dict[str, Any]) -> None:
    assert step(summary, "create_job") == {"id": "sdk14-job", "pool_id": "sdk14-pool", "state": "active"}
    assert step(summary, "add_task")["state"] in {"active", "preparing", "running", "completed"}
    assert step(summary, "add_collection")["results"] == [[f"t{i}", "success"] for i in range(4)]
    # The wire value is the spec's lower-case "clienterror", which 14.x's enum (and its TaskExists rule) expects.
    assert step(summary, "add_collection_duplicate") == {"task_id": "T0", "status": "clienterror", "code": "TaskExists"}


def test_tasks_complete_with_their_exit_codes_counts_and_output(summary: dict[str, Any]) -> None:
    assert step(summary, "completed") == {"hello": 0, "t0": 0, "t1": 1, "t2": 0, "t3": 1}
    assert step(summary, "stdout") == {"text": "hello from 14.x\n"}
    counts = {"active": 0, "running": 0, "completed": 5, "succeeded": 3, "failed": 2}
    assert step(summary, "task_counts") == {"tasks": counts, "slots": counts}


def test_filter_select_and_paging_through_the_options_classes(summary: dict[str, Any]) -> None:
    assert step(summary, "filtered_lists") == {
        "pools": [{"id": "sdk14-pool", "vm_size": "standard_d2s_v3"}],
        "jobs": [{"id": "sdk14-job"}],
        "no_jobs": [],
        "failed_tasks": ["t1", "t3"],
    }
    # max_results=2: three pages, each next link followed by msrest exactly as the emulator wrote it.
    assert step(summary, "paging") == [["hello", "t0"], ["t1", "t2"], ["t3"]]


def test_errors_arrive_as_batch_error_exceptions_with_the_service_codes(summary: dict[str, Any]) -> None:
    missing, again, wrong_key = step(summary, "missing_job"), step(summary, "pool_again"), step(summary, "wrong_key")
    assert (missing["status"], missing["code"]) == (404, "JobNotFound")
    assert (again["status"], again["code"]) == (409, "PoolExists")
    assert (wrong_key["status"], wrong_key["code"]) == (403, "AuthenticationFailed")
    assert "AuthenticationErrorDetail" in wrong_key["values"]
    for error in (missing, again, wrong_key):
        assert error["lang"] == "en-US" and "RequestId:" in error["message"]
    patched = step(summary, "conditional_patch")
    assert (patched["stale"]["status"], patched["stale"]["code"]) == (412, "ConditionNotMet")
    assert patched["priority"] == 5


def test_job_and_pool_are_deleted(summary: dict[str, Any]) -> None:
    assert step(summary, "delete") == {"pool_exists": False, "jobs": []}
