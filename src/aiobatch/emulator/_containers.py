"""Container tasks, run through a container runtime the emulator is pointed at (docker, podman, or a path).

Without a runtime, a task's ``containerSettings`` and a pool's ``containerConfiguration`` are refused (`_support`):
a task never runs on the host as if its image were there. With one, a task runs as::

    <runtime> run --rm -v <node root>:<node root> -w <task wd> -e NAME ... <containerRunOptions> <imageName>
        <commandLine's arguments>

The node's directory is mounted at the same path, so ``AZ_BATCH_*`` paths, resource files and output files mean
inside the container what they mean outside it (Azure maps the node's root directory into the container the same
way). The command line is split into arguments and given to the container as its command, with no shell, as
Batch does on Linux (a command line that needs a shell starts one: ``/bin/sh -c '...'``). The task's environment
variables are passed by name (``-e NAME``: the runtime reads their values from its
own environment, which the runner sets to the task's). ``workingDirectory: containerImageDefault`` leaves ``-w``
out. A pool's ``containerImageNames`` are pulled (``<runtime> pull``) as each node starts; a pull that fails leaves
the node ``unusable``. Registry logins are not emulated: log in with the runtime beforehand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shlex
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._types import TaskRun

log = logging.getLogger("aiobatch.emulator")

#: Variables of a node's environment that describe the host, not the task: the image keeps its own.
_HOST_ONLY = frozenset(
    {
        "PATH",
        "HOME",
        "PWD",
        "SHELL",
        "TMPDIR",
        "LANG",
        "XDG_RUNTIME_DIR",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "CONTAINER_HOST",
    }
)


def resolve_runtime(runtime: str | Path | None) -> str | None:
    """The runtime as an absolute path (``docker`` looked up on PATH), or None for no runtime.

    Raises:
        ValueError: the runtime is neither an executable file nor found on PATH.
    """
    if runtime is None:
        return None
    text = str(runtime)
    found = shutil.which(text)
    if found is None:
        raise ValueError(f"container runtime {text!r} not found (give docker, podman or the path of one)")
    return str(Path(found).absolute())


def run_command(
    runtime: str,
    settings: Mapping[str, Any],
    run: TaskRun,
    env_names: Iterable[str],
) -> str:
    """The command line that runs ``run``'s command line in ``settings``' image (shell-quoted, for the runner)."""
    argv = [runtime, "run", "--rm", "-v", f"{run.node_root}:{run.node_root}"]
    if str(settings.get("workingDirectory") or "taskWorkingDirectory").lower() != "containerimagedefault":
        argv += ["-w", str(run.task_dir / "wd")]
    for name in sorted(set(env_names) - _HOST_ONLY):
        argv += ["-e", name]
    argv += shlex.split(str(settings.get("containerRunOptions") or ""))
    argv += [str(settings["imageName"]), *shlex.split(run.command_line)]
    return shlex.join(argv)


def in_container(run: TaskRun, settings: Mapping[str, Any] | None, runtime: str | None) -> TaskRun:
    """``run``, to be run in its container when the task has ``containerSettings`` (and a runtime is set)."""
    if not settings or runtime is None:
        return run
    from ._runner import task_environment  # the runner imports nothing of this module's

    try:
        shlex.split(run.command_line)
    except ValueError:
        return run  # the runner refuses it the same way (CommandLaunchFailed) before launching anything
    names = task_environment(run).keys()
    return dataclasses.replace(run, command_line=run_command(runtime, settings, run, names))


async def pull_images(runtime: str | None, pool_spec: Mapping[str, Any]) -> None:
    """Pull the pool's ``containerImageNames`` with the runtime, one after the other.

    Raises:
        RuntimeError: a pull failed (the node that was starting ends ``unusable``).
    """
    config = (pool_spec.get("virtualMachineConfiguration") or {}).get("containerConfiguration") or {}
    images = config.get("containerImageNames") or []
    if runtime is None or not images:
        return
    for image in images:
        process = await asyncio.create_subprocess_exec(
            runtime,
            "pull",
            str(image),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{runtime} pull {image} failed: {err.decode(errors='replace')[-500:]}")
        log.info("pulled container image %s", image)


__all__ = ["in_container", "pull_images", "resolve_runtime", "run_command"]
