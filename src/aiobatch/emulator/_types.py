"""Plain value types shared by the emulator's model, wire layer and task runner.

These are the parts of a task that the emulator *acts on* (what to download, what to run, what to upload, how a
run ended).  They carry no wire names: `_wire` turns JSON into them and back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ResourceFile:
    """One entry of a task's ``resourceFiles``: a file (or container prefix) to download before the task runs."""

    http_url: str | None = None
    storage_container_url: str | None = None
    auto_storage_container_name: str | None = None
    blob_prefix: str | None = None
    file_path: str | None = None
    file_mode: str | None = None


@dataclass(frozen=True)
class OutputFile:
    """One entry of a task's ``outputFiles``: files matching a pattern to upload to a container after the run."""

    file_pattern: str
    container_url: str
    path: str | None = None
    upload_condition: str = "tasksuccess"  # tasksuccess | taskfailure | taskcompletion
    upload_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FailureInfo:
    """Why a task (or start task) failed, as the service reports it in ``executionInfo.failureInfo``."""

    category: str  # "usererror" | "servererror"
    code: str
    message: str
    details: tuple[tuple[str, str], ...] = ()


@dataclass
class TaskRun:
    """Everything the runner needs to run one attempt of a task (or a start task) on one node."""

    account_name: str
    account_url: str
    pool_id: str
    node_id: str
    node_root: Path
    task_id: str
    command_line: str
    #: The task's directory (holds ``wd/``, ``stdout.txt``, ``stderr.txt``), e.g.
    #: ``<node_root>/workitems/<job>/job-1/<task>`` or ``<node_root>/startup`` for a start task.
    task_dir: Path
    job_id: str | None = None
    resource_files: tuple[ResourceFile, ...] = ()
    output_files: tuple[OutputFile, ...] = ()
    #: The task's own ``environmentSettings`` (the start task's, for a start task); they win over all else.
    environment: dict[str, str] = field(default_factory=dict)
    #: The job's ``commonEnvironmentSettings``; the task's own settings override them, as on Azure.
    job_environment: dict[str, str] = field(default_factory=dict)
    #: ``AZ_BATCH_APP_PACKAGE_*`` variables of the pool's and the task's application packages.
    app_package_environment: dict[str, str] = field(default_factory=dict)
    #: Variables of the emulator's own environment that its user named to pass through (none by default).
    passed_environment: dict[str, str] = field(default_factory=dict)
    #: ``AZ_BATCH_TASK_USER`` and ``AZ_BATCH_TASK_USER_IDENTITY``: the task's ``userIdentity`` as a node names it.
    task_user: str = "_azbatch"
    task_user_identity: str = "PoolNonAdmin"
    node_is_dedicated: bool = True
    max_wall_clock_time: float | None = None
    retry_count: int = 0
    is_start_task: bool = False


@dataclass
class TaskOutcome:
    """How one attempt ended."""

    start_time: dt.datetime
    end_time: dt.datetime
    exit_code: int | None
    failure_info: FailureInfo | None = None

    @property
    def result(self) -> str:
        """``success`` or ``failure``, as in ``executionInfo.result``."""
        return "failure" if self.failure_info is not None else "success"
