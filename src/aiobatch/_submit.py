"""Task submission: chunks of at most 100 tasks (and about 1 MB), several in flight, each task added once.

Why not the SDK's ``create_tasks``: azure-batch 15.1's helper loops without bound on a 503, spins on per-task
server errors, ignores a camelCase ``serverError`` and counts anyone's ``TaskExists`` as success. Here every
chunk is one ``create_task_collection`` request at a time, retried by the one policy in `aiobatch._retry`.

Retry layers. azure-core's own ``RetryPolicy`` is switched off for these requests (``retry_total=0`` is passed
with each call, on top of the client being built with `sdk_client_kwargs`), so a 503 costs exactly one request
per attempt of *policy*: attempts never multiply, and the policy's deadline means what it says. Waits are
jittered exponential backoff and honour ``Retry-After``.

What is retried, and how a task is never added twice:

- A whole-request transient failure (429, 5xx, timeout, dropped connection) is retried with the same task ids:
  the request may or may not have taken effect.
- Per-task ``serverError`` results (compared case-insensitively: older API versions spell them camelCase) are
  retried, only those tasks. Tasks still getting them when the policy gives up end the call in a
  `SubmissionError` (after every other chunk is done), like a request that failed as a whole for good.
- ``TaskExists`` means success only for a task this run created. For a task never sent before it is someone
  else's: a conflict, reported in `SubmitResult.failed` and `SubmitResult.conflicts`, never as success. For a
  task an earlier attempt sent (in this call or an earlier `submit_tasks` of the same `SubmissionLedger`), the
  earlier attempt may have created it -- or its answer, lost, was itself ``TaskExists`` for someone else's task.
  Every task carries the ledger's run id in its environment (`RUN_ID_VARIABLE`), so such a task is read back
  (one GET each, only after an ambiguous attempt) and is this run's only if it carries that id.
- A resumed run (a ledger given an earlier run's id, as `Client(run_id=...)` does) has no record of what its
  earlier process sent, so every ``TaskExists`` is read back the same way: the tasks that run added count as
  existing, anyone else's stay conflicts.
- ``413 RequestBodyTooLarge`` halves the chunk (chunks are also pre-split by an estimate of their body size);
  a single task too large on its own fails with that reason.
- Other per-task ``clientError`` results are final and reported with the service's reason.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    map_error,
)
from azure.core.pipeline import AsyncPipeline
from azure.core.rest import HttpRequest

from ._errors import (
    AiobatchError,
    ConfigurationError,
    NotFoundError,
    ServiceError,
    ServiceUnavailableError,
    SubmissionError,
)
from ._redact import redact
from ._retry import RetryPolicy, call
from ._specs import ResourceFileSpec, TaskSpec, check_id

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_TASKS_PER_REQUEST",
    "RUN_ID_VARIABLE",
    "SubmissionLedger",
    "SubmitResult",
    "submit_tasks",
]

logger = logging.getLogger("aiobatch")

#: The service's limit on tasks per ``addtaskcollection`` request.
MAX_TASKS_PER_REQUEST = 100
#: The body size a chunk is kept under (the service's limit is about 1 MB; the estimate leaves a margin).
MAX_BODY_BYTES = 900_000
_ENVELOPE_BYTES = 16  # {"value":[...]} around the tasks
_API_VERSION = "2025-06-01"  # the SDK's, for a client that does not say (its own config does)
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with separators builds one per call
#: The environment variable every submitted task carries: the run id of the ledger that sent it. Tasks have no
#: metadata; this is how a ``TaskExists`` after a lost answer tells this run's task from someone else's.
RUN_ID_VARIABLE = "AIOBATCH_RUN_ID"
#: Most reads at once when checking whose tasks an ambiguous ``TaskExists`` names.
_VERIFY_CONCURRENCY = 8


class SubmissionLedger:
    """The task ids this run has sent to each job: the tasks it may have created.

    A ``TaskExists`` answer can be success only for an id in the ledger (sent by an earlier, ambiguous
    attempt), and is when the task carries the ledger's *run_id* (in `RUN_ID_VARIABLE`); for any other id it
    is someone else's task. One ledger per run (the `Client` keeps one, with its run id) makes re-submitting
    the same tasks after an error safe. Memory: one lower-cased id string per task.

    A *resumed* ledger carries the id of a run that may have submitted before, in another process: it cannot
    know what that process sent, so every ``TaskExists`` is read back, and a task carrying its run id counts as
    existing rather than as a conflict.

    Args:
        run_id: the id every task sent through this ledger carries; a random one if not given.
        resumed: whether tasks carrying *run_id* may already exist; by default, whether *run_id* was given.

    Example:
        >>> ledger = SubmissionLedger("nightly-2026-11-24")  # resuming: earlier tasks of this run are its own
        >>> ledger.resumed
        True
    """

    def __init__(self, run_id: str | None = None, *, resumed: bool | None = None) -> None:
        self.run_id = run_id or secrets.token_hex(8)
        self.resumed = run_id is not None if resumed is None else resumed
        self._sent: dict[str, set[str]] = {}

    def sent(self, job_id: str) -> set[str]:
        """The lower-cased ids sent to *job_id* so far (a live set; treat it as read-only)."""
        return self._sent.setdefault(job_id.lower(), set())

    def count(self, job_id: str) -> int:
        """How many distinct tasks this run has sent to *job_id*."""
        return len(self._sent.get(job_id.lower(), ()))

    def __repr__(self) -> str:
        return (
            f"SubmissionLedger(run_id={self.run_id!r}, resumed={self.resumed}, jobs={len(self._sent)}, "
            f"tasks={sum(len(s) for s in self._sent.values())})"
        )


@dataclass(frozen=True)
class SubmitResult:
    """What `submit_tasks` did, task by task (ids in the order given).

    Attributes:
        job_id: the job.
        added: tasks this call added.
        existing: tasks already in the job because an earlier attempt of this run added them (its answer was
            lost); they count as submitted.
        failed: task id -> the service's reason, for tasks not added (conflicts included).
        conflicts: tasks whose id was taken by a task this run did not create (``TaskExists`` on a first
            attempt); also in *failed*.
        requests: ``addtaskcollection`` requests sent.
        elapsed: seconds the submission took.
    """

    job_id: str
    added: tuple[str, ...]
    existing: tuple[str, ...]
    failed: Mapping[str, str]
    conflicts: tuple[str, ...] = ()
    requests: int = 0
    elapsed: float = 0.0

    @property
    def submitted(self) -> int:
        """Tasks now in the job on this run's behalf: added plus existing."""
        return len(self.added) + len(self.existing)

    @property
    def ok(self) -> bool:
        """Whether every task is in the job on this run's behalf."""
        return not self.failed

    def raise_for_failures(self) -> SubmitResult:
        """Raise `SubmissionError` if any task was not added; return self otherwise (for chaining).

        Raises:
            SubmissionError: carrying *added*, *existing* and *failed*.

        Example:
            >>> SubmitResult(job_id="j", added=("t1",), existing=(), failed={}).raise_for_failures().submitted
            1
        """
        if self.failed:
            raise SubmissionError(job_id=self.job_id, added=self.added, existing=self.existing, failed=self.failed)
        return self


class _Item:
    """One task of a submission: its ids, its spec and, once made, its JSON text (compact, ASCII)."""

    __slots__ = ("id", "json", "key", "run_id", "spec")

    def __init__(self, key: str, id: str, spec: TaskSpec, run_id: str = "") -> None:
        self.key = key  # lower-cased id: Batch ids are unique case-insensitively
        self.id = id
        self.spec = spec
        self.run_id = run_id
        self.json: str | None = None  # made when its chunk is formed

    def prepare(self) -> str:
        """Make the task's JSON text (once) and return it."""
        if self.json is None:
            self.json = _task_json(self.spec, self.run_id)
        return self.json

    def measure(self) -> int:
        """The task's size in bytes as it counts towards the body limit (its JSON and a comma)."""
        return len(self.prepare()) + 1  # ASCII (ensure_ascii): characters are bytes

    def body(self) -> dict[str, Any]:
        """The task's JSON as a mapping (for a client that takes models)."""
        parsed: dict[str, Any] = json.loads(self.prepare())
        return parsed


@dataclass
class _Outcome:
    added: set[str] = field(default_factory=set)
    existing: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    conflicts: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)  # per-task server errors that outlasted the policy
    requests: int = 0


class _ServerErrors(AiobatchError):
    """Some tasks of a chunk got per-task server errors: retry those (an AiobatchError so `call` re-raises it)."""

    def __init__(self, reasons: Mapping[str, str]) -> None:
        super().__init__(f"{len(reasons)} tasks got server errors")
        self.reasons = dict(reasons)


def _text(value: object) -> str:
    if type(value) is str:  # as JSON gives it: the common case, once per task
        return value.lower()
    return str(getattr(value, "value", value) or "").lower()


def _reason(error: models.BatchError | None, fallback: str) -> str:
    if error is None:
        return fallback
    message = error.message
    text = getattr(message, "value", None) if message is not None else None
    text = " ".join(str(text or "").split("\n")[0].split())
    details = "; ".join(f"{v.key}: {v.value}" for v in error.error_values or [] if v.key)
    reason = f"{error.code or fallback}: {text}" if text else str(error.code or fallback)
    # A rejected property's value can be a resource file URL with its SAS: never keep the signature.
    return redact(f"{reason} ({details})" if details else reason)


_string = json.encoder.encode_basestring_ascii  # what the compact encoder writes for a str (C, ASCII-escaped)


def _task_json(spec: TaskSpec, run_id: str = "") -> str:
    """A task's JSON text: `_task_body`'s, compact and ASCII, written directly for the fields most tasks use.

    A task with only an id, a command line, resource files from URLs and an environment (the usual task) is
    written as text, with no dict per task and no encoder pass over one; any other field sends it through
    `_task_body` and the encoder. ``tests/client/test_submit_body.py`` holds the two equal.
    """
    if (
        spec.output_files
        or spec.application_packages
        or spec.display_name is not None
        or spec.required_slots is not None
        or spec.elevated
        or spec.max_wall_clock_time is not None
        or spec.max_task_retry_count is not None
        or spec.retention_time is not None
    ):
        return _COMPACT.encode(_task_body(spec, run_id))
    text = '{"id":' + _string(spec.id) + ',"commandLine":' + _string(spec.command_line)
    if spec.resource_files:
        files = []
        for r in spec.resource_files:
            if r.http_url is not None and r.storage_container_url is None and r.blob_prefix is None:
                one = '{"filePath":' + _string(r.file_path) + ',"httpUrl":' + _string(r.http_url)
                files.append(one + ("}" if r.file_mode is None else ',"fileMode":' + _string(r.file_mode) + "}"))
            else:
                files.append(_COMPACT.encode(_resource_file_body(r)))
        text += ',"resourceFiles":[' + ",".join(files) + "]"
    environment = spec.environment
    if environment or run_id:
        pairs = ['{"name":' + _string(k) + ',"value":' + _string(v) + "}" for k, v in environment.items()]
        if run_id and RUN_ID_VARIABLE not in environment:
            pairs.append('{"name":"' + RUN_ID_VARIABLE + '","value":' + _string(run_id) + "}")
        text += ',"environmentSettings":[' + ",".join(pairs) + "]"
    return text + "}"


def _resource_file_body(r: ResourceFileSpec) -> dict[str, Any]:
    body: dict[str, Any] = {"filePath": r.file_path}
    if r.http_url is not None:
        body["httpUrl"] = r.http_url
    if r.storage_container_url is not None:
        body["storageContainerUrl"] = r.storage_container_url
    if r.blob_prefix is not None:
        body["blobPrefix"] = r.blob_prefix
    if r.file_mode is not None:
        body["fileMode"] = r.file_mode
    return body


def _task_body(spec: TaskSpec, run_id: str = "") -> dict[str, Any]:
    """A task's JSON for ``addtaskcollection``: what ``to_task_model(spec).as_dict()`` gives, built directly.

    With *run_id*, the environment also carries it as `RUN_ID_VARIABLE` (unless the spec sets it already).

    Building the SDK's models costs about 50 us a task (model construction, then ``as_dict``), which at 10,000
    tasks is most of a submission's CPU time; this costs a tenth of that. ``tests/client/test_submit_body.py``
    holds the two equal for every field of `TaskSpec`. Constraints keep going through the SDK's model, which owns
    the ISO 8601 duration format.
    """
    body: dict[str, Any] = {"id": spec.id, "commandLine": spec.command_line}
    if spec.display_name is not None:
        body["displayName"] = spec.display_name
    if spec.resource_files:
        body["resourceFiles"] = [_resource_file_body(r) for r in spec.resource_files]
    if spec.output_files:
        body["outputFiles"] = [
            {
                "filePattern": o.file_pattern,
                "destination": {
                    "container": {"containerUrl": o.container_url, **({"path": o.path} if o.path is not None else {})}
                },
                "uploadOptions": {"uploadCondition": o.upload_condition},
            }
            for o in spec.output_files
        ]
    if spec.environment or run_id:
        env = [{"name": k, "value": v} for k, v in spec.environment.items()]
        if run_id and RUN_ID_VARIABLE not in spec.environment:
            env.append({"name": RUN_ID_VARIABLE, "value": run_id})
        body["environmentSettings"] = env
    if spec.application_packages:
        body["applicationPackageReferences"] = [
            {"applicationId": p.application_id, **({"version": p.version} if p.version is not None else {})}
            for p in spec.application_packages
        ]
    if any(v is not None for v in (spec.max_wall_clock_time, spec.max_task_retry_count, spec.retention_time)):
        body["constraints"] = models.BatchTaskConstraints(
            max_wall_clock_time=_timedelta(spec.max_wall_clock_time),
            retention_time=_timedelta(spec.retention_time),
            max_task_retry_count=spec.max_task_retry_count,
        ).as_dict()
    if spec.required_slots is not None:
        body["requiredSlots"] = spec.required_slots
    if spec.elevated:
        body["userIdentity"] = {"autoUser": {"scope": "task", "elevationLevel": "admin"}}
    return body


def _timedelta(seconds: float | None) -> dt.timedelta | None:
    return None if seconds is None else dt.timedelta(seconds=seconds)


def _encode(items: Iterable[_Item]) -> bytes:
    """An ``addtaskcollection`` body: the tasks' JSON texts (prepared by `_chunks`), compact, ASCII."""
    return ('{"value":[' + ",".join([item.prepare() for item in items]) + "]}").encode()


#: How the SDK's operation maps an error status to azure-core's exceptions (its ``error_map``), kept alike so that
#: `aiobatch._errors.translate` sees the same exceptions whichever way a chunk went.
_ERROR_MAP: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    304: ResourceNotModifiedError,
}


#: Per Batch client: the lean pipeline its chunks go through (see `_lean_pipeline`); it goes when the client does.
_lean: weakref.WeakKeyDictionary[BatchClient, tuple[AsyncPipeline[Any, Any], str, str]] = weakref.WeakKeyDictionary()


def _lean_pipeline(batch: BatchClient) -> tuple[AsyncPipeline[Any, Any], str, str] | None:
    """The client's own transport and signing, without the rest of its pipeline; its endpoint and API version.

    A chunk needs its headers, its user agent, the client's proxies and its signature (Shared Key or Entra ID):
    those policies, as the client configured them, over the client's transport (its connections, TLS settings
    and timeouts). It does not need azure-core's retry and redirect loops (switched off: `aiobatch._retry`
    retries), its network trace, its tracing spans or its deserialisation of the answer (read here, once): about
    three quarters of a request's CPU time on the client, a sixth of a task's. ``None`` when the client is not
    built as azure-batch 15 builds it (then the full pipeline is used).
    """
    found = _lean.get(batch)
    if found is not None:
        return found
    config = getattr(batch, "_config", None)
    transport = getattr(getattr(getattr(batch, "_client", None), "_pipeline", None), "_transport", None)
    endpoint = getattr(config, "endpoint", None)
    auth = getattr(config, "authentication_policy", None)
    if config is None or transport is None or not endpoint or auth is None:
        return None
    policies = [getattr(config, name, None) for name in ("headers_policy", "user_agent_policy", "proxy_policy")] + [
        auth
    ]
    pipeline: AsyncPipeline[Any, Any] = AsyncPipeline(transport, policies=[p for p in policies if p is not None])
    version = getattr(config, "api_version", None) or _API_VERSION
    _lean[batch] = found = (pipeline, str(endpoint).rstrip("/"), str(version))
    return found


async def _post_collection(batch: BatchClient, job_id: str, body: bytes) -> bytes:
    """POST one ``addtaskcollection`` body, as encoded, signed by the client; return the answer's bytes.

    What ``BatchClient.create_task_collection`` does, minus its serialisation: the chunk was encoded once, to
    measure it, and is sent as those bytes, over `_lean_pipeline` (or the client's full pipeline, with azure-core's
    retries off, where that cannot be built), so the one policy in `aiobatch._retry` wraps it. An error status
    raises the exceptions the SDK's operation raises.
    """
    path = f"/jobs/{urllib.parse.quote(job_id, safe='')}/addtaskcollection"
    headers = {"Content-Type": "application/json; odata=minimalmetadata", "Accept": "application/json"}
    lean = _lean_pipeline(batch)
    if lean is not None:
        pipeline, endpoint, version = lean
        request = HttpRequest(
            "POST", f"{endpoint}{path}", params={"api-version": version}, headers=headers, content=body
        )
        response = (await pipeline.run(request)).http_response
    else:
        config = getattr(batch, "_config", None)
        version = getattr(config, "api_version", None) or _API_VERSION
        request = HttpRequest("POST", path, params={"api-version": version}, headers=headers, content=body)
        response = await batch.send_request(request, retry_total=0)
    if response.status_code != 200:
        map_error(status_code=response.status_code, response=response, error_map=_ERROR_MAP)
        try:
            error: models.BatchError | None = models.BatchError(response.json())
        except (ValueError, TypeError):
            error = None
        raise HttpResponseError(response=response, model=error)
    content: bytes = response.content
    return content


async def _results(answer: Any) -> list[Mapping[str, Any]]:
    """The per-task results of an ``addtaskcollection`` answer, as JSON mappings.

    The answer is the body's bytes (`_post_collection`), their stream, or a ``BatchCreateTaskCollectionResult``,
    itself a Mapping of the same JSON.
    """
    if isinstance(answer, Mapping):
        values = answer.get("value")
    elif isinstance(answer, bytes):
        values = json.loads(answer).get("value") if answer else None
    else:
        body = b"".join([chunk async for chunk in answer])
        values = json.loads(body).get("value") if body else None
    return [v for v in values or [] if type(v) is dict or isinstance(v, Mapping)]


def _error(value: object) -> models.BatchError | None:
    if value is None or isinstance(value, models.BatchError):
        return value
    return models.BatchError(value) if isinstance(value, Mapping) else None


def _items(tasks: Iterable[TaskSpec], run_id: str) -> list[_Item]:
    items: list[_Item] = []
    seen: dict[str, str] = {}
    for spec in tasks:
        if not isinstance(spec, TaskSpec):
            raise ConfigurationError(f"submit_tasks takes TaskSpec objects, not {type(spec).__name__}.")
        if spec.environment.get(RUN_ID_VARIABLE, run_id) != run_id:
            raise ConfigurationError(
                f"task {spec.id!r}: the environment variable {RUN_ID_VARIABLE} is reserved for aiobatch's run id; "
                "remove it from the task's environment.",
                setting="environment",
            )
        key = spec.id.lower()  # a TaskSpec's id was checked when it was made
        if key in seen:
            raise ConfigurationError(
                f"task ids {seen[key]!r} and {spec.id!r} are the same to Batch (ids compare case-insensitively); "
                "each task needs its own id (task_ids_for() derives distinct ones).",
                setting="tasks",
            )
        seen[key] = spec.id
        items.append(_Item(key=key, id=spec.id, spec=spec, run_id=run_id))
    return items


def _chunks(items: Sequence[_Item], max_tasks: int, max_bytes: int) -> Iterator[tuple[list[_Item], bytes]]:
    # Tasks are turned into JSON text here, a chunk at a time, as the workers take chunks: the first request
    # goes out while later tasks are still being prepared. A chunk is measured from its tasks' texts, cut where
    # it would pass the limit, and its body joined from the same texts: each task is encoded once.
    position = 0
    while position < len(items):
        candidate = items[position : position + max_tasks]
        texts = [item.prepare() for item in candidate]
        # As measured before bodies were joined from texts: the envelope, the list's brackets and commas.
        if _ENVELOPE_BYTES + sum(map(len, texts)) + len(texts) + 2 > max_bytes:
            size, cut = _ENVELOPE_BYTES, 0
            for item in candidate:
                if cut and size + item.measure() > max_bytes:
                    break
                size += item.measure()
                cut += 1
            candidate = candidate[:cut]
            texts = texts[:cut]
        position += len(candidate)
        yield list(candidate), ('{"value":[' + ",".join(texts) + "]}").encode()


async def submit_tasks(
    batch: BatchClient,
    job_id: str,
    tasks: Iterable[TaskSpec],
    *,
    ledger: SubmissionLedger | None = None,
    concurrency: int = 4,
    policy: RetryPolicy | None = None,
    max_tasks_per_request: int = MAX_TASKS_PER_REQUEST,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> SubmitResult:
    """Add tasks to a job in chunks, several in flight, each task at most once; see the module docstring.

    Args:
        batch: the Batch client.
        job_id: the job.
        tasks: the tasks; ids must be distinct case-insensitively.
        ledger: the run's record of ids sent (a new one if not given, so ``TaskExists`` is judged within this
            call only).
        concurrency: most requests in flight at once.
        policy: the retry policy for each chunk (attempts and deadline per chunk).
        max_tasks_per_request: tasks per request, at most 100.
        max_body_bytes: estimated body size a chunk is kept under.

    Returns:
        What was added, what already existed (this run's) and what failed, with the service's reasons.

    Raises:
        ConfigurationError: duplicate or invalid ids, or bad limits.
        SubmissionError: a request failed as a whole and for good, or per-task ``serverError`` results
            outlasted the policy (the cause is chained: `NotFoundError` for a missing job, `ConflictError` for a
            completed one, `ServiceUnavailableError` when transient failures outlasted the policy). It carries
            what was added and what failed; tasks whose request may have taken effect are in the ledger, so
            submitting them again with the same ledger is safe. Final per-task refusals (a conflict, an invalid
            task) are not raised: they are in the returned ``failed``.
    """
    check_id("job", job_id)
    if concurrency < 1 or not 1 <= max_tasks_per_request <= MAX_TASKS_PER_REQUEST or max_body_bytes < 1024:
        raise ConfigurationError(
            "concurrency must be at least 1, max_tasks_per_request 1 to 100 and max_body_bytes at least 1024."
        )
    started = time.monotonic()
    ledger = ledger if ledger is not None else SubmissionLedger()
    items = _items(tasks, ledger.run_id)
    sent = ledger.sent(job_id)
    outcome = _Outcome()
    chunks = _chunks(items, max_tasks_per_request, max_body_bytes)
    abort: list[BaseException] = []

    async def worker(cancel: anyio.CancelScope) -> None:
        for chunk, body in chunks:  # shared iterator: each chunk is taken by exactly one worker
            try:
                await _submit_chunk(
                    batch, job_id, chunk, sent, outcome, policy, ledger.run_id, ledger.resumed, body=body
                )
            except AiobatchError as exc:
                abort.append(exc)
                cancel.cancel()
                return

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(items) or 1)):
            tg.start_soon(worker, tg.cancel_scope)

    def ordered(keys: set[str] | dict[str, str]) -> tuple[str, ...]:
        if not keys:
            return ()
        if len(keys) == len(items):  # every task (the usual outcome for *added*): no lookups
            return tuple(i.id for i in items)
        return tuple(i.id for i in items if i.key in keys)

    elapsed = time.monotonic() - started
    if abort:
        cause = abort[0]
        done = outcome.added | outcome.existing | set(outcome.failed)
        failed = {i.id: outcome.failed[i.key] for i in items if i.key in outcome.failed}
        unsent = f"not submitted: {cause}"
        unknown = (
            f"not known to be submitted (the request may have taken effect; resubmit with the same ledger): {cause}"
        )
        for item in items:
            if item.key not in done:
                failed[item.id] = unknown if item.key in sent else unsent
        raise SubmissionError(
            f"submitting {len(items)} tasks to job {job_id!r} stopped: {cause} "
            f"{len(outcome.added) + len(outcome.existing)} were submitted before it stopped; fix the cause and "
            "submit the rest again (tasks already added are recognised).",
            job_id=job_id,
            added=ordered(outcome.added),
            existing=ordered(outcome.existing),
            failed=failed,
        ) from cause
    if outcome.gave_up:
        # The service kept answering serverError for these tasks: transient failures that outlasted the policy
        # end in the same typed error as a request that failed as a whole (the other tasks are all accounted for).
        key = next(i.key for i in items if i.key in outcome.gave_up)
        cause = ServiceUnavailableError(
            f"the Batch service kept answering serverError for {len(outcome.gave_up)} tasks of job {job_id!r} "
            f"until the retry policy gave up (last: {outcome.failed[key]})",
            service="batch",
            resource_kind="job",
            resource_id=job_id,
        )
        raise SubmissionError(
            f"{len(outcome.gave_up)} of {len(items)} tasks could not be added to job {job_id!r}: the service "
            "kept answering serverError until the retry policy gave up. Submit them again later (tasks already "
            f"added are recognised), or give the policy more attempts or time. "
            f"{len(outcome.added) + len(outcome.existing)} were submitted.",
            job_id=job_id,
            added=ordered(outcome.added),
            existing=ordered(outcome.existing),
            failed={i.id: outcome.failed[i.key] for i in items if i.key in outcome.failed},
        ) from cause
    result = SubmitResult(
        job_id=job_id,
        added=ordered(outcome.added),
        existing=ordered(outcome.existing),
        failed={i.id: outcome.failed[i.key] for i in items if i.key in outcome.failed} if outcome.failed else {},
        conflicts=ordered(outcome.conflicts),
        requests=outcome.requests,
        elapsed=elapsed,
    )
    logger.info(
        "job %r: %d tasks added, %d already there, %d failed (%d conflicts) in %d requests, %.1f s",
        job_id,
        len(result.added),
        len(result.existing),
        len(result.failed),
        len(result.conflicts),
        result.requests,
        elapsed,
    )
    return result


def _conflict(key: str, error: models.BatchError | None, sent: set[str], outcome: _Outcome) -> None:
    """Record a ``TaskExists`` for a task this run did not create: someone else's, a conflict."""
    # Forget having sent it, so a later resubmission is judged a conflict again, never taken for ours.
    sent.discard(key)
    outcome.conflicts.add(key)
    outcome.failed[key] = (
        f"{_reason(error, 'TaskExists')} -- a task with this id was already in the job "
        "and this run did not create it; choose another id or delete that task."
    )


async def _claim(
    batch: BatchClient,
    job_id: str,
    found: Mapping[str, tuple[_Item, models.BatchError | None]],
    sent: set[str],
    outcome: _Outcome,
    policy: RetryPolicy | None,
    run_id: str,
) -> None:
    """Read back tasks an attempt found existing after an ambiguous one; this run's carry its run id.

    An earlier attempt whose answer was lost may have created them -- or may itself have met someone else's
    task. The task's `RUN_ID_VARIABLE` decides. One GET per task, a few at once, each under *policy*.

    Raises:
        AiobatchError: a read failed for good (the first such error).
    """
    limiter = anyio.CapacityLimiter(_VERIFY_CONCURRENCY)
    errors: list[AiobatchError] = []

    async def one(item: _Item, error: models.BatchError | None) -> None:
        async with limiter:
            if errors:
                return
            try:
                task = await call(
                    lambda: batch.get_task(job_id, item.id, select=["id", "environmentSettings"]),
                    policy=policy,
                    resource="task",
                    resource_id=item.id,
                    action="read back",
                )
            except NotFoundError:
                sent.discard(item.key)
                outcome.failed[item.key] = (
                    f"{_reason(error, 'TaskExists')} -- the task existed, then was deleted before this run could "
                    "tell whose it was; submit it again."
                )
                return
            except AiobatchError as exc:
                errors.append(exc)
                return
        env = {e.name: e.value for e in task.environment_settings or []}
        if env.get(RUN_ID_VARIABLE) == run_id:
            outcome.existing.add(item.key)
        else:
            _conflict(item.key, error, sent, outcome)

    async with anyio.create_task_group() as tg:
        for item, error in found.values():
            tg.start_soon(one, item, error)
    if errors:
        raise errors[0]


async def _submit_chunk(
    batch: BatchClient,
    job_id: str,
    chunk: list[_Item],
    sent: set[str],
    outcome: _Outcome,
    policy: RetryPolicy | None,
    run_id: str = "",
    resumed: bool = False,
    *,
    body: bytes | None = None,
) -> None:
    """Submit one chunk until every task in it is added, existing or failed for good.

    *body* is the chunk's encoding, made when it was measured: sent as is while every task in the chunk is
    still pending (a retry of only some tasks encodes those).
    """
    pending: dict[str, _Item] = {item.key: item for item in chunk}
    # TaskExists for tasks an earlier attempt sent: this run's or someone else's, told apart once the chunk is in.
    ambiguous: dict[str, tuple[_Item, models.BatchError | None]] = {}
    # The SDK's own client gets the chunk's bytes, encoded once (`_post_collection`), and hands the answer's bytes
    # back: no model per task either way, and no second encoding. Another object offering create_task_collection
    # (a wrapper) gets the documented call with models, and its model answer is read through the same Mapping.
    raw = isinstance(batch, BatchClient)
    whole = len(chunk)
    newly_sent: set[str] = set()

    async def attempt() -> None:
        prior = {key for key in pending if key in sent}  # ids an earlier attempt may have created
        fresh = set(pending) - prior
        sent.update(fresh)
        newly_sent.update(fresh)
        outcome.requests += 1
        # retry_total=0: azure-core must not retry under us (see the module docstring).
        if raw:
            encoded = body if body is not None and len(pending) == whole else _encode(pending.values())
            answer: Any = await _post_collection(batch, job_id, encoded)
        else:
            values = [models.BatchTaskCreateOptions(i.body()) for i in pending.values()]
            answer = await batch.create_task_collection(
                job_id, models.BatchTaskGroup(task_values=values), retry_total=0
            )
        server: dict[str, str] = {}
        answered: set[str] = set()
        for result in await _results(answer):
            key = _text(result.get("taskId"))
            if key not in pending or key in answered:
                continue
            answered.add(key)
            status = _text(result.get("status"))
            if status == "success":
                outcome.added.add(key)
                del pending[key]
                continue
            error = _error(result.get("error"))
            if status == "clienterror":
                code = str(error.code or "") if error is not None else ""
                if code.lower() == "taskexists" and (key in prior or resumed):
                    ambiguous[key] = (pending[key], error)
                elif code.lower() == "taskexists":
                    _conflict(key, error, sent, outcome)  # there before this run ever sent it: someone else's
                else:
                    if key not in prior:
                        sent.discard(key)  # refused outright: this request created nothing for it
                    outcome.failed[key] = _reason(error, "clientError")
            else:  # serverError (any spelling), or a status this code does not know: try again
                server[key] = _reason(error, status or "serverError")
                continue
            del pending[key]
        for key in set(pending) - answered:
            server[key] = "the service returned no result for this task"
        if server:
            raise _ServerErrors(server)

    try:
        await call(
            attempt,
            policy=policy,
            resource="job",
            resource_id=job_id,
            action="add tasks to",
            retry_on=lambda exc: isinstance(exc, _ServerErrors),
        )
    except _ServerErrors as exc:
        for key, why in exc.reasons.items():
            outcome.failed[key] = f"{why} (still failing when the retry policy gave up)"
            outcome.gave_up.add(key)
    except ServiceError as exc:
        if exc.status != 413 and (exc.code or "").lower() != "requestbodytoolarge":
            raise
        if ambiguous:
            await _claim(batch, job_id, ambiguous, sent, outcome, policy, run_id)
        # Nothing was created: forget what this chunk sent for the first time, then halve it.
        sent.difference_update(newly_sent & set(pending))
        items = list(pending.values())
        if len(items) == 1:
            outcome.failed[items[0].key] = (
                f"RequestBodyTooLarge: the task alone ({items[0].measure()} bytes as JSON) is larger than the "
                "service accepts; shorten its command line, environment or file lists."
            )
            return
        half = len(items) // 2
        logger.debug("job %r: request body too large for %d tasks; halving", job_id, len(items))
        for part in (items[:half], items[half:]):
            await _submit_chunk(batch, job_id, part, sent, outcome, policy, run_id, resumed)
        return
    if ambiguous:
        await _claim(batch, job_id, ambiguous, sent, outcome, policy, run_id)
