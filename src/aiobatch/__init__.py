"""aiobatch: drive Azure Batch and Azure Blob Storage end to end from asyncio.

Files go up to Blob Storage, task specs go to Batch, completion events come back, outputs come down::

    import aiobatch

    async with aiobatch.Client.from_env(cleanup=True) as client:
        await client.upload_files("inputs", videos)
        await client.ensure_pool(pool_spec)
        await client.wait_for_pool_ready(pool_spec.id)
        await client.create_job("convert", pool_id=pool_spec.id, on_all_tasks_complete="terminatejob")
        await client.submit_tasks("convert", task_specs)
        async for event in client.watch_tasks("convert"):
            ...
        await client.download_outputs("outputs", "gifs/")

Everything public is importable from here; the modules beneath are private. The local Batch service the tests
run against is `aiobatch.emulator`; pytest fixtures are in `aiobatch.testing`.
"""

from __future__ import annotations

from ._client import Client
from ._config import BatchSettings, Settings, StorageSettings
from ._errors import (
    AiobatchError,
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    DeadlineExceededError,
    IntegrityError,
    JobError,
    NotFoundError,
    PoolError,
    PoolResizeError,
    PoolStartTaskError,
    PoolTimeoutError,
    SasExpiredError,
    ServiceError,
    ServiceUnavailableError,
    StorageError,
    SubmissionError,
    TaskFailedError,
)
from ._fanout import FileMap
from ._jobs import JobOptions, JobRef
from ._mapoptions import MapOptions
from ._mapresults import FileResult, MapReport
from ._observer import MapObserver
from ._pools import PoolRef, PoolStatus
from ._redact import RedactingFilter, redact
from ._retry import RetryPolicy
from ._run import RUN_ID_KEY, RunResources, SweepReport
from ._sas import SasPolicy
from ._specs import (
    AppPackageRef,
    EnvRef,
    OutputFileSpec,
    PoolSpec,
    ResourceFileSpec,
    StartTaskSpec,
    TaskSpec,
    app_package_dir,
    command_line,
    output_files_to,
    quote_arg,
    resource_file,
    task_id_for,
    task_ids_for,
)
from ._storage import BlobFile, DownloadResult, TransferProgress, UploadResult
from ._submit import SubmissionLedger, SubmitResult
from ._watch import TaskEvent, TaskFailure, TaskSummary, TaskWatch

__version__ = "0.1.0"

__all__ = [
    "RUN_ID_KEY",
    "AiobatchError",
    "AppPackageRef",
    "AuthenticationError",
    "BatchSettings",
    "BlobFile",
    "Client",
    "ConfigurationError",
    "ConflictError",
    "DeadlineExceededError",
    "DownloadResult",
    "EnvRef",
    "FileMap",
    "FileResult",
    "IntegrityError",
    "JobError",
    "JobOptions",
    "JobRef",
    "MapObserver",
    "MapOptions",
    "MapReport",
    "NotFoundError",
    "OutputFileSpec",
    "PoolError",
    "PoolRef",
    "PoolResizeError",
    "PoolSpec",
    "PoolStartTaskError",
    "PoolStatus",
    "PoolTimeoutError",
    "RedactingFilter",
    "ResourceFileSpec",
    "RetryPolicy",
    "RunResources",
    "SasExpiredError",
    "SasPolicy",
    "ServiceError",
    "ServiceUnavailableError",
    "Settings",
    "StartTaskSpec",
    "StorageError",
    "StorageSettings",
    "SubmissionError",
    "SubmissionLedger",
    "SubmitResult",
    "SweepReport",
    "TaskEvent",
    "TaskFailedError",
    "TaskFailure",
    "TaskSpec",
    "TaskSummary",
    "TaskWatch",
    "TransferProgress",
    "UploadResult",
    "__version__",
    "app_package_dir",
    "command_line",
    "output_files_to",
    "quote_arg",
    "redact",
    "resource_file",
    "task_id_for",
    "task_ids_for",
]

# The public names live in private modules; say that they are aiobatch's (as httpx does), so that reprs,
# tracebacks and pickles name `aiobatch.Client`, not `aiobatch._client.Client`.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) or callable(_value):
        _value.__module__ = "aiobatch"
del _name, _value
