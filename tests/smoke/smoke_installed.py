"""Smoke test of an installed aiobatch-azure wheel: one small job end to end, run as a user runs their code.

``nox -s build`` installs the wheel into a fresh virtual environment outside the checkout and runs, with an empty
``HOME``, in an empty folder::

    aiobatch local -- python smoke_installed.py

``aiobatch local`` starts the Batch emulator and Azurite and hands this script the ``AZURE_*`` variables. The
script checks that it imports the installed package (not a checkout), its metadata and data files, then uploads
one file, makes a pool and a job with one task, collects the task's output, and checks that the client's cleanup
left nothing behind. It prints one line per check and a closing ``smoke: N passed, N failed`` line; its exit
status is 1 if any check failed.

It is not part of the package and not collected by pytest (its name does not start with ``test_``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.resources
import os
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

DISTRIBUTION = "aiobatch-azure"

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{f': {detail}' if detail else ''}", flush=True)


def installed_package() -> None:
    import aiobatch

    location = Path(aiobatch.__file__).resolve()
    checkout = os.environ.get("AIOBATCH_SMOKE_CHECKOUT", "")
    inside_checkout = bool(checkout) and location.is_relative_to(Path(checkout).resolve())
    check("imports the installed package", location.is_relative_to(Path(sys.prefix).resolve()), str(location))
    check("not the checkout's copy", not inside_checkout, str(location))
    version = importlib.metadata.version(DISTRIBUTION)
    check("one version", version == aiobatch.__version__, f"{DISTRIBUTION} {version}, aiobatch {aiobatch.__version__}")
    package = importlib.resources.files("aiobatch")
    check("py.typed installed", package.joinpath("py.typed").is_file())
    emulator = package.joinpath("emulator")
    for name in ("api_schema.json", "catalogue.json"):
        check(f"emulator data {name}", emulator.joinpath(name).is_file())


async def one_job(work: Path) -> None:
    import aiobatch
    from aiobatch import Client, PoolSpec

    inputs, outputs = work / "inputs", work / "outputs"
    inputs.mkdir()
    (inputs / "hello.txt").write_text("one two three four five\n", encoding="utf-8")
    pool = PoolSpec.ubuntu_24_04("smoke", "standard_d2s_v3", dedicated_nodes=1)
    async with Client.from_env(cleanup=True) as client:
        run_id = client.run_id
        run = client.map_files(inputs, "wc -w < {input} > {output}", "{stem}.count", pool=pool, output_dir=outputs)
        results_ = [result async for result in run]
        report = run.report
    check("one task ran", [r.status for r in results_] == ["succeeded"], str(report).splitlines()[-1])
    counted = outputs / "hello.count"
    words = counted.read_text(encoding="utf-8").strip() if counted.is_file() else "(missing)"
    check("its output was collected", words == "5", f"{counted.name} says {words}")
    # The client deleted what it made; the service removes a job or pool a moment after (it is "deleting").
    async with aiobatch.Client.from_env() as sweeper:
        for _ in range(120):
            left = (await sweeper.sweep_run(run_id, dry_run=True)).found
            if left.empty:
                break
            await asyncio.sleep(0.5)
    check("cleanup left nothing", left.empty, ", ".join(left.lines()) or "no job, pool or container")


def guarded(name: str, step: Callable[[], Awaitable[None] | None]) -> None:
    try:
        outcome = step()
        if outcome is not None:
            asyncio.run(outcome)  # type: ignore[arg-type]
    except Exception as exc:
        traceback.print_exc()
        check(name, False, f"{type(exc).__name__}: {exc}")


def main() -> int:
    cwd = Path.cwd()
    before = sorted(cwd.iterdir())
    guarded("installed package", installed_package)
    with tempfile.TemporaryDirectory(prefix="aiobatch-smoke-") as folder:
        guarded("one job end to end", lambda: one_job(Path(folder)))
    check("nothing written to the current folder", sorted(cwd.iterdir()) == before, str(cwd))
    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"smoke: {len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
