"""The fan-out: one command over many local files, one Batch task per file, one result per file as it completes.

`Client.map_files` returns a `FileMap`. It composes the client's public coroutines in the order the data flows --
files -> blobs (`upload_files`, identical blobs skipped) -> a usable pool (`ensure_pool`, `wait_for_pool_ready`) ->
a job (`create_job`) -> task specs (`input_sas_url`, `output_container_sas_url`, `submit_tasks`) -> completion
events (`watch_tasks`) -> outputs (`download_outputs`) -- and hands back a `FileResult` per input.

Names. On the node a task sees its input under a fixed, safe name (``input`` plus the input's suffix when that
suffix is plain, e.g. ``input.txt``) and writes its outputs under fixed names too (``output.txt``,
``output1.log``, ...). The real names -- spaces, quotes, ``$(...)``, ``;``, ``&``, ``#``, ``%``, any script --
stay in the blob names of the inputs and in the local output paths; in the command line they appear only
through ``{name}``, ``{stem}`` and ``{suffix}``, quoted for the pool's OS by `aiobatch.quote_arg`. So no name
reaches a shell unquoted, an ``outputFiles`` pattern (a glob) or a file system that refuses some characters.
Output blobs are ``<job id>/<task id>/<node name>``: a blob an earlier run left can never pass for this run's.

Iteration. `FileMap` is a plain async iterator, not a generator: every step runs inside ``__anext__``, and no
task group stays open between two results. While tasks run, one step watches for completions and downloads
the outputs of those that completed (several at once); it returns as soon as some results are ready, stopping
the watch between polls. Leaving ``async with`` (or `FileMap.aclose`) terminates the job, as does a cancellation
or an error inside an iteration. A plain ``break`` drops the `FileMap` handle; all the run's state lives in a
private `_MapRun` that never refers back to it, so the handle is freed at once and its finalizer schedules the
stop on the running loop (as asyncio does for a dropped async generator), which `Client.aclose` awaits. What the
run created -- containers, pool, job -- is the client's to delete (``Client(cleanup=True)``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import re
import shutil
import string
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread

from ._errors import AiobatchError, ConfigurationError, ConflictError, NotFoundError
from ._pools import PoolStatus, get_pool_status
from ._retry import call
from ._specs import (
    AppPackageRef,
    OsFamily,
    PoolSpec,
    TaskSpec,
    check_id,
    command_line,
    output_files_to,
    quote_arg,
    resource_file,
    task_ids_for,
)
from ._storage import TransferProgress, _unwrapped_task_group
from ._watch import TaskEvent, TaskWatch, _explain

if sys.version_info >= (3, 11):
    from typing import TypedDict, Unpack
else:  # a dependency below Python 3.11 (pyproject.toml)
    from typing_extensions import TypedDict, Unpack

if TYPE_CHECKING:
    from ._client import Client

__all__ = [
    "DEFAULT_INPUT_CONTAINER",
    "DEFAULT_OUTPUT_CONTAINER",
    "PLACEHOLDERS",
    "FileMap",
    "FileResult",
    "MapObserver",
    "MapOptions",
    "MapPlan",
    "MapReport",
    "build_task_specs",
    "failure_line",
    "failure_reason",
    "largest_first",
    "node_name",
    "output_blob",
    "output_present",
    "plan_inputs",
    "render_command",
    "render_output_name",
    "seconds_between",
    "tail_lines",
]

logger = logging.getLogger("aiobatch")

DEFAULT_INPUT_CONTAINER = "aiobatch-inputs"
DEFAULT_OUTPUT_CONTAINER = "aiobatch-outputs"

#: The placeholders of a command template, and what each stands for (all quoted for the pool's OS).
PLACEHOLDERS: Mapping[str, str] = {
    "input": "the input file on the node (a fixed, safe name such as input.txt)",
    "output": "the first output file on the node (output.txt, say), to be written by the command",
    "outputs": "every output file on the node, separated by spaces; {outputs[N]} is output N (from 0)",
    "name": "the input's name: its file name, or its path under the folder (with '/')",
    "stem": "the input's name without its suffix",
    "suffix": "the input's suffix, e.g. '.txt' ('' when it has none)",
}
#: The placeholders an output name may hold (it names a local file, so nothing is quoted).
OUTPUT_PLACEHOLDERS = ("name", "stem", "suffix")

_PLAIN_SUFFIX = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")
_OUTPUTS_ITEM = re.compile(r"^outputs\[(\d+)\]$")
#: Lines of a failed task's stderr a result keeps.
STDERR_LINES = 5
#: Seconds the job's termination may take when the iteration is abandoned (break + aclose, cancel, error).
_ABANDON_TIMEOUT = 30.0
#: A round of downloads ends once this many times ``download_concurrency`` results wait for the caller: the
#: downloads stay that many in flight meanwhile, and results still reach the caller in bounded batches.
_RESULTS_PER_ROUND = 4

Status = Literal["succeeded", "failed", "skipped"]
StageKind = Literal["upload", "pool", "pool-reused", "submit", "run"]
#: An output name: a template (``"{stem}.txt"``), or a function of the input's name.
OutputName = str | Callable[[str], str]


# ----------------------------------------------------------------------------------------------------
# Rules shared with aiobatch.demo.gifs
# ----------------------------------------------------------------------------------------------------


def output_present(path: Path) -> bool:
    """Whether an output is already in place: a non-empty file (outputs are renamed into place when complete).

    Example:
        >>> output_present(Path("/nonexistent/out.txt"))
        False
    """
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def largest_first(names: Sequence[str], sizes: Mapping[str, int]) -> list[str]:
    """*names* by size, largest first (ties by name): the longest tasks start first.

    With more inputs than task slots, a big input started last would run alone at the end; started first, it
    overlaps the small ones, and the run ends sooner.

    Example:
        >>> largest_first(["a", "b", "c"], {"a": 1, "b": 3, "c": 3})
        ['b', 'c', 'a']
    """
    return sorted(names, key=lambda name: (-sizes.get(name, 0), name))


def tail_lines(text: str, lines: int = STDERR_LINES) -> str:
    r"""The last *lines* non-blank lines of *text*, right-stripped.

    Example:
        >>> tail_lines("a\n\nb \nc\n", 2)
        'b\nc'
    """
    kept = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def failure_line(event: TaskEvent) -> str | None:
    """One line saying why a task failed: its exit code, or the service's failure in plain words.

    A plain non-zero exit says enough (the stderr tail beside it gives the command's reason); a failure the
    service reports (an input it could not download, an output it could not upload) gets the event's
    explanation, which says what to do about it. ``None`` for a task that succeeded.
    """
    if event.succeeded:
        return None
    if event.failure is None or event.failure.code in ("", "FailureExitCode"):
        return f"exit code {event.exit_code}" if event.exit_code is not None else "did not run"
    return event.explanation or event.error().message


def seconds_between(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    """Seconds from *start* to *end* (never negative), or ``None`` when either is unknown."""
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


# ----------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------


def _parse(template: str, allowed: Iterable[str], what: str) -> list[tuple[str, str | None]]:
    """Split a template into (literal text, field name or None); refuse unknown fields and format specs."""
    allowed = set(allowed)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(
            f"{what} {template!r} is not a valid template ({exc}); write a literal brace as {{{{ or }}}}."
        ) from exc
    out: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            known = name in allowed or ("outputs" in allowed and _OUTPUTS_ITEM.match(name))
            if not known or spec or conversion:
                listed = ", ".join("{" + n + "}" for n in sorted(allowed))
                raise ConfigurationError(
                    f"{what} {template!r} has the placeholder {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}; use only {listed} (no format specs), and {{{{ or }}}} for a "
                    "literal brace."
                )
        out.append((literal, name))
    return out


def _name_parts(name: str) -> dict[str, str]:
    suffix = PurePosixPath(name).suffix
    return {"name": name, "stem": name[: len(name) - len(suffix)] if suffix else name, "suffix": suffix}


def render_output_name(template: OutputName, name: str) -> str:
    """An output's local path (relative, ``/``-separated) for input *name*: ``{stem}.txt`` -> ``a b.txt``.

    Raises:
        ConfigurationError: an unknown placeholder, or a path that is absolute, empty or climbs out with ``..``.

    Example:
        >>> render_output_name("logs/{stem}.log", "my cat.txt")
        'logs/my cat.log'
    """
    if callable(template):
        rendered = template(name)
    else:
        values = _name_parts(name)
        parsed = _parse(template, OUTPUT_PLACEHOLDERS, "output")
        rendered = "".join(lit + (values[f] if f else "") for lit, f in parsed)
    parts = rendered.split("/")
    if not rendered or rendered.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rendered:
        raise ConfigurationError(
            f"output {template!r} gives {rendered!r} for input {name!r}: an output must be a relative path in the "
            "output folder, without empty, '.' or '..' parts."
        )
    return rendered


def node_name(base: str, local: str) -> str:
    """A fixed, safe file name on the node: *base* plus *local*'s suffix when it is plain (``input.txt``).

    Example:
        >>> node_name("input", "it's 100%.TXT"), node_name("output1", "a.b c")
        ('input.txt', 'output1')
    """
    # Lower case: a tool that goes by the extension knows ".mp4" if any; the real name keeps its case.
    suffix = PurePosixPath(local).suffix.lower()
    return base + (suffix if _PLAIN_SUFFIX.match(suffix) else "")


def render_command(template: str, *, os: OsFamily, input_file: str, output_files: Sequence[str], name: str) -> str:
    """The task's command line: *template* with its placeholders quoted for *os*, run by the OS's shell.

    Linux runs it as ``/bin/bash -c '<script>'``, Windows as ``cmd /c <script>``; see `PLACEHOLDERS`.

    Raises:
        ConfigurationError: an unknown placeholder, ``{outputs[N]}`` past the last output, or a value no command
            line can carry (a line break on Windows).

    Example:
        >>> render_command("wc -w {input} > {output}", os="linux", input_file="input.txt",
        ...                output_files=["output.txt"], name="my cat.txt")
        "/bin/bash -c 'wc -w input.txt > output.txt'"
    """
    values = {**_name_parts(name), "input": input_file, "output": output_files[0] if output_files else ""}
    parts: list[str] = []
    for literal, placeholder in _parse(template, PLACEHOLDERS, "command"):
        parts.append(literal)
        if placeholder is None:
            continue
        item = _OUTPUTS_ITEM.match(placeholder)
        if placeholder == "outputs":
            parts.append(" ".join(quote_arg(o, os=os) for o in output_files))
        elif item is not None:
            index = int(item.group(1))
            if index >= len(output_files):
                raise ConfigurationError(
                    f"command {template!r} uses {{{placeholder}}}, but there are {len(output_files)} outputs "
                    f"(numbered from 0)."
                )
            parts.append(quote_arg(output_files[index], os=os))
        else:
            if placeholder == "output" and not output_files:
                raise ConfigurationError(f"command {template!r} uses {{output}}, but no output is named.")
            parts.append(quote_arg(values[placeholder], os=os))
    script = "".join(parts)
    if not script.strip():
        raise ConfigurationError("the command template is empty.")
    if os == "windows":
        return "cmd /c " + script
    return command_line(["/bin/bash", "-c", script], os="linux", shell=False)


# ----------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapPlan:
    """The inputs of a fan-out and what each makes, split into those to run and those already done.

    Attributes:
        inputs: every input, in order (``name`` -> local path).
        outputs: input name -> its outputs' local paths, relative to the output folder.
        todo: names of the inputs to run, in order.
        present: names of the inputs whose outputs are all already there (skipped).
        sizes: input name -> bytes.
    """

    inputs: dict[str, Path]
    outputs: dict[str, tuple[str, ...]]
    todo: tuple[str, ...]
    present: tuple[str, ...]
    sizes: dict[str, int]


def _collect_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], glob: str | None
) -> list[tuple[Path, str]]:
    if isinstance(inputs, (str, os.PathLike)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise ConfigurationError(
                f"input folder {str(folder)!r} does not exist or is not a folder: pass a folder (with glob=) or a "
                "list of files.",
                setting="inputs",
            )
        found = sorted(p for p in folder.glob(glob or "*") if p.is_file())
        return [(p, p.relative_to(folder).as_posix()) for p in found]
    if glob is not None:
        raise ConfigurationError("glob= applies to a folder of inputs, not to a list of files.", setting="glob")
    return [(Path(p), Path(p).name) for p in inputs]


def plan_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    outputs: Sequence[OutputName],
    output_dir: str | os.PathLike[str],
    *,
    glob: str | None = None,
) -> MapPlan:
    """Find the inputs, name each one's outputs, and split them into those to run and those already done (blocking).

    Args:
        inputs: a folder (its files matching *glob*, ``*`` by default) or a list of files.
        outputs: output name templates, or functions of the input's name (see `render_output_name`).
        output_dir: where the outputs go.
        glob: the pattern under a folder (``**/*.txt`` reaches into subfolders).

    Returns:
        The plan.

    Raises:
        ConfigurationError: a missing input, two inputs with one name, or two outputs with one path (compared
            without case, as a case-insensitive file system would).

    Example:
        >>> plan = plan_inputs([], ["{stem}.txt"], "out")
        >>> plan.todo
        ()
    """
    out = Path(output_dir)
    if not outputs:
        raise ConfigurationError("name at least one output, e.g. outputs=['{stem}.txt'].", setting="outputs")
    found = _collect_inputs(inputs, glob)
    paths: dict[str, Path] = {}
    made: dict[str, tuple[str, ...]] = {}
    owner: dict[str, tuple[str, str]] = {}
    sizes: dict[str, int] = {}
    for path, name in found:
        if name in paths:
            raise ConfigurationError(
                f"two inputs are called {name!r} ({str(paths[name])!r} and {str(path)!r}); each input needs its own "
                "name.",
                setting="inputs",
            )
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigurationError(f"cannot read input {str(path)!r}: {exc}", setting="inputs") from exc
        if not path.is_file():
            raise ConfigurationError(f"input {str(path)!r} is not a file.", setting="inputs")
        paths[name], sizes[name] = path, stat.st_size
        rendered = tuple(render_output_name(t, name) for t in outputs)
        for rel in rendered:
            other = owner.get(rel.casefold())
            if other is not None:
                raise ConfigurationError(
                    f"inputs {other[0]!r} and {name!r} would both write {rel!r}"
                    if other[0] != name
                    else f"outputs {other[1]!r} and {rel!r} of input {name!r} are the same file"
                    f"; give each output its own name (e.g. with {{stem}}).",
                    setting="outputs",
                )
            owner[rel.casefold()] = (name, rel)
        made[name] = rendered
    todo: list[str] = []
    present: list[str] = []
    for name in paths:
        done = all(output_present(out.joinpath(*rel.split("/"))) for rel in made[name])
        (present if done else todo).append(name)
    return MapPlan(inputs=paths, outputs=made, todo=tuple(todo), present=tuple(present), sizes=sizes)


def build_task_specs(
    plan: MapPlan,
    command: str,
    *,
    os: OsFamily,
    job_id: str,
    input_urls: Mapping[str, str],
    output_url: str,
    environment: Mapping[str, str] | None = None,
    application_packages: Sequence[AppPackageRef] = (),
    retries: int = 0,
    timeout: float | None = None,
) -> list[TaskSpec]:
    """One task spec per input to run, the largest first (pure: no I/O).

    Each task downloads its input as ``input<suffix>`` and uploads each output ``output<i><suffix>`` to the blob
    ``<job id>/<task id>/<that name>`` (see `output_blob`).

    Args:
        plan: the plan (`plan_inputs`).
        command: the command template.
        os: the pool's OS, for quoting.
        job_id: the job, for the output blob names.
        input_urls: input name -> read SAS URL of its blob.
        output_url: the output container's write SAS URL.
        environment: environment variables for every task.
        application_packages: packages every task needs.
        retries: retries of a failed task.
        timeout: seconds a task may run per attempt.

    Returns:
        The specs, largest input first.

    Raises:
        ConfigurationError: a bad template, or a name no command line on *os* can carry.

    Example:
        >>> plan = MapPlan({"a b.txt": Path("a b.txt")}, {"a b.txt": ("a b.n",)}, ("a b.txt",), (), {})
        >>> spec, = build_task_specs(plan, "wc -w < {input} > {output}", os="windows", job_id="j",
        ...                          input_urls={"a b.txt": "https://x/in/a%20b.txt"}, output_url="https://x/out")
        >>> spec.command_line
        'cmd /c wc -w < input.txt > output.n'
    """
    ids = task_ids_for(plan.todo)
    specs: list[TaskSpec] = []
    for name in largest_first(plan.todo, plan.sizes):
        node_input = node_name("input", name)
        node_outputs = _node_outputs(plan.outputs[name])
        specs.append(
            TaskSpec(
                id=ids[name],
                command_line=render_command(
                    command, os=os, input_file=node_input, output_files=node_outputs, name=name
                ),
                resource_files=[resource_file(input_urls[name], node_input)],
                output_files=[
                    output_files_to(output_url, node, path=output_blob(job_id, ids[name], node))
                    for node in node_outputs
                ],
                environment=dict(environment or {}),
                application_packages=tuple(application_packages),
                max_task_retry_count=retries,
                max_wall_clock_time=timeout,
                display_name=name[:1024],
            )
        )
    return specs


def _node_outputs(outputs: Sequence[str]) -> list[str]:
    return [node_name("output" if i == 0 else f"output{i}", rel) for i, rel in enumerate(outputs)]


def output_blob(job_id: str, task_id: str, node_file: str) -> str:
    """The blob an output goes to: ``<job id>/<task id>/<its name on the node>``.

    Example:
        >>> output_blob("map-1", "a_txt-0123456789", "output.txt")
        'map-1/a_txt-0123456789/output.txt'
    """
    return f"{job_id}/{task_id}/{node_file}"


# ----------------------------------------------------------------------------------------------------
# Results and the report
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResult:
    """How one input ended.

    Attributes:
        name: the input's name (its file name, or its path under the input folder).
        input: the local input file.
        status: ``"succeeded"``, ``"failed"``, or ``"skipped"`` (its outputs were all there already).
        outputs: the local output files in place, in the order the outputs are named.
        missing: outputs the task did not write (a task that exits 0 but writes no file fails with these).
        task_id: its Batch task id.
        exit_code: the command's exit code, when it ran.
        node_id: the node it ran on.
        start_time: when its last attempt started.
        end_time: when it completed.
        error: for a failure, why, in plain words (`TaskEvent.explanation`, or what went wrong with the outputs).
        stderr_tail: for a failed task, the last lines of its stderr.
        event: the task's completion event.
    """

    name: str
    input: Path
    status: Status
    outputs: tuple[Path, ...] = ()
    missing: tuple[str, ...] = ()
    task_id: str | None = None
    exit_code: int | None = None
    node_id: str | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    error: str | None = None
    stderr_tail: str = ""
    event: TaskEvent | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the input has all its outputs (it succeeded, or was skipped)."""
        return self.status != "failed"

    @property
    def seconds(self) -> float | None:
        """How long its last attempt ran on its node."""
        return seconds_between(self.start_time, self.end_time)


def failure_reason(result: FileResult) -> str:
    """One line saying why an input failed, for a table or a progress line (``""`` for one that did not fail).

    A task that ran and failed says so in `failure_line`'s words; a missing output, an output that could not be
    downloaded or a task that was never added says so in the result's own error.
    """
    if result.status != "failed":
        return ""
    event = result.event
    line = failure_line(event) if event is not None and not result.missing else None
    return line or result.error or ""


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _short(node_id: str | None, width: int = 24) -> str:
    """A node id fit for a table: Batch's are ~70 characters; keep the start and the distinctive end."""
    if not node_id:
        return "-"
    if len(node_id) <= width:
        return node_id
    keep = (width - 1) // 2
    return node_id[:keep] + "…" + node_id[-keep:]


@dataclass(frozen=True)
class MapReport:
    """What a fan-out did, input by input (in the order given).

    ``str(report)`` is `format`: a table, one row per input, and a line of totals.

    Attributes:
        results: one per input that has ended (every input, once the run is complete).
        run_id: the client's run id.
        job_id: the job (``None`` when nothing needed running).
        pool_id: the pool.
        elapsed: seconds from the start to the last result.
        complete: whether the run reached its end (not stopped early).
    """

    results: tuple[FileResult, ...]
    run_id: str
    job_id: str | None
    pool_id: str
    elapsed: float
    complete: bool = True

    @property
    def succeeded(self) -> int:
        """How many inputs succeeded."""
        return sum(1 for r in self.results if r.status == "succeeded")

    @property
    def failed(self) -> int:
        """How many inputs failed."""
        return sum(1 for r in self.results if r.status == "failed")

    @property
    def skipped(self) -> int:
        """How many inputs were skipped (their outputs were there already)."""
        return sum(1 for r in self.results if r.status == "skipped")

    @property
    def ok(self) -> bool:
        """Whether the run is complete and every input has its outputs."""
        return self.complete and all(r.ok for r in self.results)

    def summary(self) -> str:
        """One line: the counts, the time, the run and the job.

        Example:
            >>> MapReport((), "run-1", None, "pool", 1.25).summary()
            '0 succeeded, 0 failed, 0 skipped in 1.2 s (run run-1, pool pool)'
        """
        where = f"run {self.run_id}" + (f", job {self.job_id}" if self.job_id else "") + f", pool {self.pool_id}"
        stopped = "; stopped early" if not self.complete else ""
        return (
            f"{self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped in {self.elapsed:.1f} s "
            f"({where}){stopped}"
        )

    def format(self, *, width: int = 40) -> str:
        """The report as a table: input, status, exit code, node (shortened), seconds, and the outputs or the error.

        Args:
            width: the most characters of an input's name shown.

        Example:
            >>> row = FileResult("a.txt", Path("a.txt"), "skipped", outputs=(Path("out/a.n"),))
            >>> print(MapReport((row,), "run-1", None, "pool", 0.5).format())  # doctest: +NORMALIZE_WHITESPACE
            input  status   exit  node  seconds  outputs / error
            a.txt  skipped  -     -     -        out/a.n
            0 succeeded, 0 failed, 1 skipped in 0.5 s (run run-1, pool pool)
        """
        header = ("input", "status", "exit", "node", "seconds", "outputs / error")
        rows = [header]
        for r in self.results:
            if r.status == "failed":
                detail = failure_reason(r)
                last = r.stderr_tail.strip().splitlines()[-1:]
                detail += f" | stderr: {last[0]}" if last else ""
            else:
                detail = ", ".join(str(p) for p in r.outputs)
            rows.append(
                (
                    _clip(r.name, width),
                    r.status,
                    "-" if r.exit_code is None else str(r.exit_code),
                    _short(r.node_id),  # the result keeps the full id
                    "-" if r.seconds is None else f"{r.seconds:.1f}",
                    _clip(detail, 160),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows]
        return "\n".join([*(line.rstrip() for line in lines), self.summary()])

    def __str__(self) -> str:
        return self.format()


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------

#: How many fan-outs each client has started: the second one in a run gets job id ``map-<run id>-2``.
_STARTED: weakref.WeakKeyDictionary[Client, int] = weakref.WeakKeyDictionary()


def _default_job_id(client: Client) -> str:
    count = _STARTED.get(client, 0) + 1
    _STARTED[client] = count
    tail = "" if count == 1 else f"-{count}"
    return f"map-{client.run_id}"[: 64 - len(tail)] + tail


async def _pool_os(client: Client, pool_id: str) -> OsFamily:
    """The OS of an existing pool, from its node agent (``batch.node.windows ...`` is Windows)."""
    pool = await call(
        lambda: client.batch.get_pool(pool_id, select=["id", "virtualMachineConfiguration"]),
        policy=client.retry_policy,
        resource="pool",
        resource_id=pool_id,
    )
    config = pool.virtual_machine_configuration
    agent = (config.node_agent_sku_id or "") if config is not None else ""
    return "windows" if agent.lower().startswith("batch.node.windows") else "linux"


class MapObserver:
    """Receives a fan-out's progress; every method does nothing here. Subclass and override what you show.

    Pass one as ``observer=`` to `Client.map_files`. Its methods are called on the event loop, between two
    requests: keep them quick (update a display, append to a list), never blocking.
    """

    def stage(self, kind: StageKind, text: str, count: int) -> None:
        """A stage begins; *text* says which in a line.

        *kind* is ``"upload"`` (of *count* files), ``"pool"``, ``"pool-reused"``, ``"submit"`` (of *count* tasks)
        or ``"run"`` (*count* tasks).
        """

    def upload_started(self, files: int, total_bytes: int) -> None:
        """The upload of *files* inputs, *total_bytes* in all, begins."""

    def upload_progress(self, progress: TransferProgress) -> None:
        """Bytes of one input went up (or it was already there: ``progress.skipped``)."""

    def pool_status(self, status: PoolStatus) -> None:
        """The pool's allocation and node states, as last seen while waiting for it."""

    def tasks_submitted(self, names_by_task: dict[str, str]) -> None:
        """These tasks (task id -> input name) are in the job."""

    def task_event(self, event: TaskEvent, name: str) -> None:
        """The task of input *name* started running or completed."""

    def download_progress(self, progress: TransferProgress) -> None:
        """Bytes of one output came down."""

    def result(self, result: FileResult) -> None:
        """An input's result is final (also a skipped one)."""

    def finished(self, report: MapReport) -> None:
        """The run reached its end; the report is final."""


def _same_package(ref: AppPackageRef, application_id: str | None, version: str | None) -> bool:
    # Application ids are case-insensitive in Batch; the version decides the AZ_BATCH_APP_PACKAGE_* variable a
    # command line reads, so it must match exactly (None: the application's default version).
    return (application_id or "").lower() == ref.application_id.lower() and (version or None) == ref.version


async def _check_packages(client: Client, spec: PoolSpec) -> None:
    """Refuse a reused pool that lacks an application package *spec* references: every task needing it would fail."""
    if not spec.application_packages:
        return
    existing = await call(
        lambda: client.batch.get_pool(spec.id, select=["id", "applicationPackageReferences"]),
        policy=client.retry_policy,
        resource="pool",
        resource_id=spec.id,
    )
    refs = [(r.application_id, r.version) for r in existing.application_package_references or []]
    for app in spec.application_packages:
        if any(_same_package(app, app_id, version) for app_id, version in refs):
            continue
        has = ", ".join(f"{a}" + (f" {v}" if v else " (default version)") for a, v in refs)
        wanted = app.version or "(default version)"
        raise ConfigurationError(
            f"pool {spec.id!r} lacks the {app.application_id} application package {wanted} (it has "
            f"{has or 'no application package'}), so every task would fail to find its program. Run without "
            "reusing it (choose another pool id, and a new pool with the package is created), or add the package "
            "to the pool's applicationPackageReferences (the pool's nodes must then be rebooted or re-created to "
            "install it).",
            setting="reuse_pool",
        )


def _move_into_place(staged: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)


class MapOptions(TypedDict, total=False):
    """The options of a fan-out (`Client.map_files`, `FileMap`): keyword arguments, each optional.

    Attributes:
        glob: the pattern under an input folder (``*`` by default; ``**/*.txt`` reaches into subfolders).
        job_id: the job id; ``map-<run id>`` by default (``-2``, ``-3`` ... for later calls on one client).
        input_container: the container the inputs go to (``aiobatch-inputs`` by default).
        output_container: the container the tasks write to (``aiobatch-outputs`` by default).
        reuse_pool: run on an existing pool with the spec's id that this run did not create (``False``).
        min_nodes: usable nodes to wait for before adding tasks (1).
        pool_timeout: seconds to wait for them (1800).
        application_packages: packages every task needs, beyond the pool's (none).
        environment: environment variables for every task (none).
        retries: retries of a failed task (0; ``-1``: unlimited).
        timeout: seconds one task may run per attempt (no limit).
        upload_concurrency: most uploads at once (8).
        download_concurrency: most inputs whose outputs download at once (8).
        poll_interval: seconds between polls while tasks complete (1.0).
        observer: receives progress -- stages, bytes, pool nodes, task events, results (none).

    Example:
        >>> options: MapOptions = {"retries": 2, "timeout": 600.0, "environment": {"LANG": "C.UTF-8"}}
        >>> sorted(options)
        ['environment', 'retries', 'timeout']
    """

    glob: str | None
    job_id: str | None
    input_container: str
    output_container: str
    reuse_pool: bool
    min_nodes: int
    pool_timeout: float
    application_packages: Sequence[AppPackageRef]
    environment: Mapping[str, str] | None
    retries: int
    timeout: float | None
    upload_concurrency: int
    download_concurrency: int
    poll_interval: float
    observer: MapObserver | None


class FileMap:
    """A fan-out in progress: an async iterator of `FileResult`, one per input, as each input ends.

    Build it with `Client.map_files` (the same arguments; the options are those of `MapOptions`). Use it in any
    of three ways::

        async for result in client.map_files(...):      # results as they come
            ...
        async with client.map_files(...) as run:         # the same; leaving the block early stops the job
            async for result in run: ...
        report = await client.map_files(...)             # run to the end, get the report

    Inputs whose outputs are all there come first (as ``"skipped"``); then, on the next iteration, the inputs are
    uploaded, the pool made ready, the job created and the tasks added; then each task's result comes as it
    completes, its outputs downloaded. Nothing runs between two results.

    Stopping early. Leaving an ``async with`` block, `aclose`, a cancellation or an error inside an iteration
    terminate the job at once. A plain ``break`` out of ``async for`` (no ``async with``) drops the fan-out
    unfinished; as asyncio does for an async generator dropped that way, its stop is then scheduled on the running
    loop, and `Client.aclose` (or leaving the client's ``async with``) waits for it before closing.

    Attributes:
        job_id: the job the tasks run in.
        pool_id: the pool.
    """

    def __init__(
        self,
        client: Client,
        inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        command: str,
        outputs: OutputName | Sequence[OutputName],
        *,
        pool: PoolSpec | str,
        output_dir: str | os.PathLike[str],
        **options: Unpack[MapOptions],
    ) -> None:
        # The handle holds the run; nothing the run holds (observer, watch, closures, tracebacks) refers back to
        # the handle, so a caller that drops it -- a plain `break` -- frees it at once, and the finalizer below
        # runs then, not whenever a garbage collection happens to find a cycle.
        run = _MapRun(client, inputs, command, outputs, pool=pool, output_dir=output_dir, **options)
        self._run = run
        self.job_id = run.job_id
        self.pool_id = run.pool_id
        finalizer = weakref.finalize(self, _stop_dropped, run)
        finalizer.atexit = False  # at interpreter exit there is no loop to stop it on; the client warns instead

    def __repr__(self) -> str:
        run = self._run
        return (
            f"FileMap(job_id={self.job_id!r}, pool_id={self.pool_id!r}, done={len(run.results)}, "
            f"finished={run.finished})"
        )

    @property
    def report(self) -> MapReport:
        """The report so far: every input's result once the iteration is exhausted (``report.complete``)."""
        return self._run.report

    async def run(self, on_result: Callable[[FileResult], object] | None = None) -> MapReport:
        """Run to the end and return the report; *on_result* is called with each result as it comes.

        Example:
            >>> async def main(client, pool):  # doctest: +SKIP
            ...     report = await client.map_files("texts", "wc -w < {input} > {output}", "{stem}.count",
            ...                                     pool=pool, output_dir="counts").run(on_result=print)
            ...     print(report)
        """
        async with self:
            async for result in self:
                if on_result is not None:
                    on_result(result)
        return self.report

    def __await__(self) -> Generator[Any, None, MapReport]:
        return self.run().__await__()

    async def __aenter__(self) -> FileMap:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: terminate the job if its tasks may still run, and end the iteration. Safe to call twice."""
        await self._run.stop()

    def __aiter__(self) -> FileMap:
        return self

    def __anext__(self) -> Coroutine[Any, Any, FileResult]:
        # The run's own coroutine: no frame of the handle's is left holding it while a step runs.
        return self._run.next()


#: Stops scheduled for fan-outs dropped unfinished, by client: held (so the loop does not lose them) until done,
#: and awaited by `Client.aclose` before it closes.
_DROPPED: weakref.WeakKeyDictionary[Client, set[asyncio.Task[None]]] = weakref.WeakKeyDictionary()


def _stop_dropped(run: _MapRun) -> None:
    """Schedule *run*'s stop on the running loop: its `FileMap` was dropped unfinished (a plain ``break``)."""
    if not run.needs_stop:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop in this thread (interpreter exit, another thread, not asyncio): the client's cleanup is left
    task = loop.create_task(run.stop_dropped(), name=f"aiobatch-stop-{run.job_id}")
    pending = _DROPPED.setdefault(run.client, set())
    pending.add(task)
    task.add_done_callback(pending.discard)


async def wait_for_dropped(client: Client) -> None:
    """Wait (shielded, bounded) for the stops of *client*'s fan-outs that were dropped unfinished."""
    pending = _DROPPED.get(client)
    if not pending:
        return
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + _ABANDON_TIMEOUT
        await asyncio.wait(set(pending))


class _MapRun:
    """A fan-out's state and work, behind its `FileMap` (which refers to this, never the other way round)."""

    def __init__(
        self,
        client: Client,
        inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        command: str,
        outputs: OutputName | Sequence[OutputName],
        *,
        pool: PoolSpec | str,
        output_dir: str | os.PathLike[str],
        **options: Unpack[MapOptions],
    ) -> None:
        unknown = sorted(set(options) - set(MapOptions.__annotations__))
        if unknown:
            raise TypeError(
                f"map_files() got an unexpected keyword argument {unknown[0]!r}; its options are those of "
                f"aiobatch.MapOptions: {', '.join(MapOptions.__annotations__)}"
            )
        self.client = client
        observer = options.get("observer")
        self._observer = observer or MapObserver()
        self._watch_running = observer is not None
        self._inputs = inputs if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        self._command = command
        self._output_names: tuple[OutputName, ...] = (
            (outputs,) if isinstance(outputs, str) or callable(outputs) else tuple(outputs)
        )
        # Templates are checked now, before anything is read or created.
        _parse(command, PLACEHOLDERS, "command")
        for template in self._output_names:
            if not callable(template):
                _parse(template, OUTPUT_PLACEHOLDERS, "output")
        self._pool = pool
        self.pool_id = check_id("pool", pool.id if isinstance(pool, PoolSpec) else pool)
        job_id = options.get("job_id")
        self.job_id = check_id("job", job_id) if job_id is not None else _default_job_id(client)
        self._output_dir = Path(output_dir)
        self._glob = options.get("glob")
        self._input_container = options.get("input_container", DEFAULT_INPUT_CONTAINER)
        self._output_container = options.get("output_container", DEFAULT_OUTPUT_CONTAINER)
        self._reuse_pool = options.get("reuse_pool", False)
        self._min_nodes = options.get("min_nodes", 1)
        self._pool_timeout = options.get("pool_timeout", 1800.0)
        self._packages = tuple(options.get("application_packages", ()))
        self._environment = dict(options.get("environment") or {})
        retries = options.get("retries", 0)
        timeout = options.get("timeout")
        upload_concurrency = options.get("upload_concurrency", 8)
        download_concurrency = options.get("download_concurrency", 8)
        if retries < -1:
            raise ConfigurationError("retries must be -1 (unlimited) or more.", setting="retries")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError("timeout must be positive seconds.", setting="timeout")
        if upload_concurrency < 1 or download_concurrency < 1:
            raise ConfigurationError("upload_concurrency and download_concurrency must be at least 1.")
        self._retries = retries
        self._timeout = timeout
        self._upload_concurrency = upload_concurrency
        self._download_concurrency = download_concurrency
        self._poll_interval = options.get("poll_interval", 1.0)
        self._staging = self._output_dir / f".aiobatch-{self.job_id}"

        self._started: float | None = None
        self._ended: float | None = None
        self._plan: MapPlan | None = None
        self._results: dict[str, FileResult] = {}
        self._ready: deque[FileResult] = deque()
        self._input_of: dict[str, str] = {}  # task id (lower case) -> input name
        self._task_of: dict[str, str] = {}  # input name -> task id
        self._job_created = False
        self._set_up = False
        self._watch: TaskWatch | None = None
        self._watch_done = False
        self._pending: deque[TaskEvent] = deque()
        self._finished = False
        self._complete = False

    @property
    def results(self) -> dict[str, FileResult]:
        """The results so far, by input name."""
        return self._results

    @property
    def finished(self) -> bool:
        """Whether the iteration is over (exhausted or stopped)."""
        return self._finished

    @property
    def needs_stop(self) -> bool:
        """Whether it started and has not ended: dropped now, its job (or staging folder) would be left behind."""
        return self._started is not None and not self._finished

    @property
    def report(self) -> MapReport:
        """The report so far."""
        order = list(self._plan.inputs) if self._plan is not None else []
        end = self._ended if self._ended is not None else time.monotonic()
        return MapReport(
            results=tuple(self._results[n] for n in order if n in self._results),
            run_id=self.client.run_id,
            job_id=self.job_id if self._job_created else None,
            pool_id=self.pool_id,
            elapsed=0.0 if self._started is None else end - self._started,
            complete=self._complete,
        )

    async def stop(self) -> None:
        """Terminate the job if its tasks may still run, and end the iteration. Safe to call twice."""
        if not self._finished:
            await self._abandon()

    async def stop_dropped(self) -> None:
        """`stop`, for a fan-out its caller dropped unfinished: never raises (nobody is there to catch it)."""
        try:
            if self.client.state == "open":
                await self.stop()
            elif not self._finished:  # a closed client ran its own cleanup; only the local staging folder is left
                self._finished = True
                await self._remove_staging()
        except Exception:
            logger.warning("could not stop job %s after its fan-out was left early", self.job_id, exc_info=True)

    async def _abandon(self) -> None:
        """Stop the job (shielded, bounded) and remove the staging folder; the iteration ends."""
        self._finished = True
        self._ended = self._ended or time.monotonic()
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _ABANDON_TIMEOUT
            if self._watch is not None:
                await self._watch.aclose()
            if self._job_created and not self._complete:
                try:
                    if await self.client.terminate_job(self.job_id):
                        logger.info("job %s terminated: the fan-out was stopped", self.job_id)
                except AiobatchError as exc:
                    logger.warning("could not terminate job %s: %s", self.job_id, exc)
            await self._remove_staging()

    async def _remove_staging(self) -> None:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._staging, ignore_errors=True))

    # -- iteration ---------------------------------------------------------------------------------------

    async def next(self) -> FileResult:
        """The next result, stepping the run until one is ready."""
        while not self._ready:
            if self._finished:
                raise StopAsyncIteration
            try:
                await self._step()
            except BaseException:
                # Cancelled, or failed for good: no task of this run may go on running.
                await self._abandon()
                raise
        return self._ready.popleft()

    def _done(self, result: FileResult) -> None:
        self._results[result.name] = result
        self._ready.append(result)
        self._observer.result(result)

    async def _step(self) -> None:
        if self._plan is None:
            await self._make_plan()
        elif not self._set_up:
            await self._set_up_run()
        elif self._pending or not self._watch_done:
            await self._round()
        else:
            await self._finish()

    async def _make_plan(self) -> None:
        self._started = time.monotonic()
        plan = await anyio.to_thread.run_sync(
            functools.partial(plan_inputs, self._inputs, self._output_names, self._output_dir, glob=self._glob)
        )
        self._plan = plan
        for name in plan.present:
            local = tuple(self._output_dir.joinpath(*rel.split("/")) for rel in plan.outputs[name])
            self._done(FileResult(name, plan.inputs[name], "skipped", outputs=local))
        if not plan.todo:
            logger.info(
                "all %d inputs already have their outputs in %s; nothing to run", len(plan.present), self._output_dir
            )
            self._set_up = self._watch_done = True

    async def _set_up_run(self) -> None:
        plan, client = self._plan, self.client
        assert plan is not None
        # Files -> blobs.
        todo = list(plan.todo)
        observer = self._observer
        files = f"{len(todo)} file{'' if len(todo) == 1 else 's'}"
        observer.stage("upload", f"uploading {files} to container {self._input_container!r}", len(todo))
        observer.upload_started(len(todo), sum(plan.sizes[n] for n in todo))
        await client.upload_files(
            self._input_container,
            [plan.inputs[n] for n in todo],
            blob_names=todo,
            concurrency=self._upload_concurrency,
            progress=observer.upload_progress,
        )
        # A usable pool, and a job on it.
        if isinstance(self._pool, PoolSpec):
            size = f" ({self._pool.vm_size})"
            observer.stage("pool", f"making sure pool {self.pool_id!r} has a usable node{size}", 0)
            await self._ensure_pool(self._pool)
            os_family: OsFamily = self._pool.os
        else:
            observer.stage("pool", f"making sure pool {self.pool_id!r} has a usable node", 0)
            os_family = await _pool_os(client, self.pool_id)
        await self._wait_for_pool()
        await client.create_job(
            self.job_id,
            pool_id=self.pool_id,
            on_all_tasks_complete="terminatejob",
            display_name="aiobatch: map_files",
        )
        # This run's job (create_job refuses another's): from here on, stopping early terminates it. A create
        # cancelled before its answer added no task, so nothing can run there; the client's cleanup checks it.
        self._job_created = True
        # Blobs -> task specs -> Batch.
        output_url = await client.output_container_sas_url(self._output_container)
        urls = {name: await client.input_sas_url(self._input_container, name) for name in todo}
        specs = build_task_specs(
            plan,
            self._command,
            os=os_family,
            job_id=self.job_id,
            input_urls=urls,
            output_url=output_url,
            environment=self._environment,
            application_packages=self._packages,
            retries=self._retries,
            timeout=self._timeout,
        )
        names = {s.id: n for s, n in zip(specs, largest_first(plan.todo, plan.sizes), strict=True)}
        self._input_of = {task_id.lower(): name for task_id, name in names.items()}
        self._task_of = {name: task_id for task_id, name in names.items()}
        tasks = f"{len(specs)} task{'' if len(specs) == 1 else 's'}"
        observer.stage("submit", f"adding {tasks} to job {self.job_id!r}", len(specs))
        submitted = await client.submit_tasks(self.job_id, specs)
        for task_id, why in submitted.failed.items():
            name = names[task_id]
            self._done(FileResult(name, plan.inputs[name], "failed", task_id=task_id, error=f"not submitted: {why}"))
        in_job = [*submitted.added, *submitted.existing]
        observer.tasks_submitted({t: names[t] for t in in_job})
        self._set_up = True
        if in_job:
            observer.stage("run", f"running {len(in_job)} tasks on pool {self.pool_id!r}", len(in_job))
            self._watch = client.watch_tasks(
                self.job_id,
                expected=len(in_job),
                include_running=self._watch_running,
                poll_interval=self._poll_interval,
                max_poll_interval=15.0,
            )
        else:
            self._watch_done = True

    async def _ensure_pool(self, spec: PoolSpec) -> None:
        """Create the pool, or -- only when asked -- run on an existing one that has the spec's packages."""
        try:
            ref = await self.client.ensure_pool(spec, reuse_existing=self._reuse_pool)
        except ConflictError as exc:
            if exc.code != "PoolExists":
                raise
            raise ConfigurationError(
                f"pool {spec.id!r} already exists and this run did not create it. Choose another pool id, or pass "
                "reuse_pool=True to run on it as it is (it must reference the application packages the tasks "
                "need; it is not deleted afterwards).",
                setting="reuse_pool",
            ) from exc
        if ref.owned:  # created now, or by an earlier attempt of this same run: built from *spec*
            return
        text = f"reusing existing pool {spec.id!r} (not created by this run; it will be left as it is)"
        self._observer.stage("pool-reused", text, 0)
        await _check_packages(self.client, spec)

    async def _wait_for_pool(self) -> None:
        """`Client.wait_for_pool_ready`, with the pool's node states shown to the observer while it waits."""
        client, observer = self.client, self._observer

        async def show() -> None:
            while True:
                try:
                    observer.pool_status(await get_pool_status(client.batch, self.pool_id, policy=client.retry_policy))
                except AiobatchError as exc:  # the display only; the wait below reports real trouble
                    logger.debug("pool status for the display failed: %s", exc)
                await anyio.sleep(1.0)

        async with _unwrapped_task_group() as tg:
            if self._watch_running:
                tg.start_soon(show)
            status = await client.wait_for_pool_ready(
                self.pool_id,
                min_nodes=self._min_nodes,
                timeout=self._pool_timeout,
                poll_interval=min(self._poll_interval, 2.0),
            )
            tg.cancel_scope.cancel()
        observer.pool_status(status)

    async def _round(self) -> None:
        """Watch and download until results are ready for the caller; then stop the watch (between polls), return.

        While completed tasks wait, `download_concurrency` downloads stay in flight (a finished one makes room for
        the next, as a capacity limiter would), until the caller has a window of results waiting, or results are
        ready and nothing is left to download. Downloads in flight then finish; events not yet collected wait in
        `_pending` for the next round.
        """
        assert self._watch is not None
        watch = self._watch
        watcher = anyio.CancelScope()
        in_flight = 0
        stopping = False
        window = _RESULTS_PER_ROUND * self._download_concurrency

        def stop() -> None:
            nonlocal stopping
            stopping = True
            watcher.cancel()

        async def collect(event: TaskEvent) -> None:
            nonlocal in_flight
            try:
                self._done(await self._collect(event))
            finally:
                in_flight -= 1
            if len(self._ready) >= window:
                stop()  # enough for the caller: hand these over, the rest comes in the next round
            start_more()
            if in_flight == 0:
                stop()  # results are ready and nothing is downloading: hand them over now

        def start_more() -> None:
            nonlocal in_flight
            while not stopping and self._pending and in_flight < self._download_concurrency:
                in_flight += 1
                tg.start_soon(collect, self._pending.popleft())

        async def watch_events() -> None:
            with watcher:
                async for event in watch:
                    name = self._input_of.get(event.task_id.lower())
                    if name is None:
                        continue
                    self._observer.task_event(event, name)
                    if event.kind == "completed":
                        self._pending.append(event)
                        start_more()
                self._watch_done = True

        async with _unwrapped_task_group() as tg:
            start_more()
            if not self._watch_done and not stopping:
                tg.start_soon(watch_events)

    async def _collect(self, event: TaskEvent) -> FileResult:
        """An event's result: its outputs downloaded and moved into place, or why it failed."""
        plan = self._plan
        assert plan is not None
        name = self._input_of[event.task_id.lower()]
        base = FileResult(
            name,
            plan.inputs[name],
            "succeeded",
            task_id=event.task_id,
            exit_code=event.exit_code,
            node_id=event.node_id,
            start_time=event.start_time,
            end_time=event.end_time,
            event=event,
        )
        if not event.succeeded:
            try:
                tail = tail_lines(await event.stderr_tail(4096))
            except AiobatchError as exc:
                tail = f"(stderr could not be read: {exc})"
            # The event's explanation advises reading the stderr from the event; this result holds it already.
            advice = (
                "Read its stderr (result.stderr_tail holds the last lines) and fix the command line or its inputs."
                if tail
                else "It wrote nothing to stderr; check the command line and its inputs."
            )
            error = _explain(event.exit_code, event.failure, event.retry_count, event.end_time, advice=advice)
            return replace(base, status="failed", error=error, stderr_tail=tail)
        placed: list[Path] = []
        missing: list[str] = []
        pairs = list(zip(plan.outputs[name], _node_outputs(plan.outputs[name]), strict=True))
        blobs = [output_blob(self.job_id, event.task_id, node) for _, node in pairs]
        try:
            # All of an input's outputs at once; only when one is missing, one by one to say which.
            await self._download(blobs)
            missing_blobs: set[str] = set()
        except NotFoundError:
            missing_blobs = set()
            for blob in blobs:
                try:
                    await self._download([blob])
                except NotFoundError:
                    missing_blobs.add(blob)
                except AiobatchError as exc:
                    return replace(base, status="failed", error=f"an output could not be downloaded: {exc}")
        except AiobatchError as exc:
            return replace(base, status="failed", error=f"an output could not be downloaded: {exc}")
        for (rel, _), blob in zip(pairs, blobs, strict=True):
            final = self._output_dir.joinpath(*rel.split("/"))
            if blob in missing_blobs:
                missing.append(rel)
                continue
            try:
                await anyio.to_thread.run_sync(_move_into_place, self._staging.joinpath(*blob.split("/")), final)
            except OSError as exc:
                return replace(
                    base,
                    status="failed",
                    outputs=tuple(placed),
                    error=f"output {rel!r} could not be put in place: {exc}",
                )
            placed.append(final)
        if missing:
            nodes = dict(zip(plan.outputs[name], _node_outputs(plan.outputs[name]), strict=True))
            wrote = ", ".join(f"{rel!r} (on the node: {nodes[rel]})" for rel in missing)
            return replace(
                base,
                status="failed",
                outputs=tuple(placed),
                missing=tuple(missing),
                error=(
                    f"the command exited with code {event.exit_code} but did not write {wrote}. Write each output "
                    "to the name its placeholder gives ({output}, {outputs[N]}), in the task's working directory."
                ),
            )
        return replace(base, outputs=tuple(placed))

    async def _download(self, blobs: list[str]) -> None:
        await self.client.download_outputs(
            self._output_container,
            self._staging,
            names=blobs,
            concurrency=len(blobs),
            progress=self._observer.download_progress,
        )

    async def _finish(self) -> None:
        plan = self._plan
        assert plan is not None
        for name in plan.todo:
            if name not in self._results:  # the job ended (terminated by someone?) before this task completed
                task_id = self._task_of.get(name)
                self._done(
                    FileResult(
                        name,
                        plan.inputs[name],
                        "failed",
                        task_id=task_id,
                        error=f"job {self.job_id!r} ended before this input's task completed (was it terminated?)",
                    )
                )
        self._finished = self._complete = True
        self._ended = time.monotonic()
        await self._remove_staging()
        report = self.report
        logger.info("map_files: %s", report.summary())
        self._observer.finished(report)
