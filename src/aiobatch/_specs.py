"""Task and pool specs, resource and output file helpers, and command lines quoted for the pool's OS.

Everything here is pure: plain frozen dataclasses in plain units (seconds, counts), functions that derive ids
and quote command lines, and conversions to the azure-batch 15.x models (`to_task_model`, `to_pool_model`,
`to_pool_specification`) that the rest of aiobatch sends.

Specs hold SAS URLs, so their reprs pass through `redact`; the SDK models they convert to do not (their repr
prints every ``sig``), so keep those models out of logs, events and messages.

Command lines. Batch does not run a task's command line in a shell. `command_line` quotes a list of arguments
so that the program receives exactly those strings -- file names with spaces, quotes, ``$``, ``%``, ``&`` or
non-ASCII letters included -- optionally inside ``/bin/bash -c '...'`` (Linux) or ``cmd /c ...`` (Windows) so
that environment variables such as an application package's path (`EnvRef`, `app_package_dir`) expand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shlex
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from azure.batch import models

from ._errors import ConfigurationError
from ._redact import redact

__all__ = [
    "ID_RE",
    "IMAGES",
    "AppPackageRef",
    "EnvRef",
    "ImagePreset",
    "OsFamily",
    "OutputFileSpec",
    "PoolSpec",
    "ResourceFileSpec",
    "StartTaskSpec",
    "TaskSpec",
    "UploadCondition",
    "app_package_dir",
    "check_id",
    "command_line",
    "output_files_to",
    "quote_arg",
    "resource_file",
    "task_id_for",
    "task_ids_for",
    "to_pool_model",
    "to_pool_specification",
    "to_task_model",
    "wire_value",
]

OsFamily = Literal["linux", "windows"]
UploadCondition = Literal["tasksuccess", "taskfailure", "taskcompletion"]

#: Batch's rule for pool, job and task ids, which aiobatch also applies to run ids: 1-64 of ``[A-Za-z0-9_-]``.
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HASH_LEN = 10  # hex digits of SHA-256 in derived task ids: 40 bits


def wire_value(value: object) -> str:
    """An SDK enum or string as its lower-case wire value (``""`` for ``None``)."""
    return str(getattr(value, "value", value) or "").lower()


def _safe_repr(obj: Any) -> str:
    parts = ", ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in fields(obj) if f.repr)
    return redact(f"{type(obj).__name__}({parts})")


def _seconds(value: float | None) -> dt.timedelta | None:
    return None if value is None else dt.timedelta(seconds=value)


def _check_positive(name: str, value: float | None, *, allow_zero: bool = True) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, not {value!r}.")


# ----------------------------------------------------------------------------------------------------
# Ids
# ----------------------------------------------------------------------------------------------------


def check_id(kind: str, value: str) -> str:
    """Check a pool, job or task id against Batch's rules: 1-64 letters, digits, hyphens and underscores.

    Batch compares ids case-insensitively (and keeps their case), so ``Job1`` and ``job1`` are the same job.

    Args:
        kind: ``"pool"``, ``"job"`` or ``"task"``, for the message.
        value: the id.

    Returns:
        The id, unchanged.

    Raises:
        ConfigurationError: the id breaks the rules; the message says how to fix it.

    Example:
        >>> check_id("job", "convert-pets_01")
        'convert-pets_01'
    """
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ConfigurationError(
            f"{kind} id {value!r} is invalid: use 1 to 64 characters, each a letter, digit, hyphen or "
            f"underscore (derive one from a file name with task_id_for()).",
            setting=f"{kind} id",
        )
    return value


def task_id_for(name: str, *, prefix: str = "") -> str:
    """Derive a valid, deterministic Batch task id from any name (a file name, usually).

    The id is the name folded to ASCII letters, digits, ``-`` and ``_`` (shortened to fit), then ``-`` and the
    first 10 hex digits of the SHA-256 of the exact name. The suffix keeps ids distinct even where the folded
    parts are equal: ``"A.mp4"`` and ``"a.mp4"`` (Batch compares ids case-insensitively), ``"a b"`` and
    ``"a_b"``, or names in other scripts. The same name always gives the same id, which is what makes
    resubmission safe.

    Args:
        name: any string: spaces, quotes, shell metacharacters and non-ASCII letters are fine.
        prefix: prepended as is; at most 40 characters of ``[A-Za-z0-9_-]``.

    Returns:
        An id of at most 64 characters matching ``[A-Za-z0-9_-]+``.

    Raises:
        ConfigurationError: *name* is empty or *prefix* is invalid.

    Example:
        >>> task_id_for("Mr. Whiskers (2).mp4")
        'Mr_Whiskers_2_mp4-5fe5128efd'
    """
    if not name:
        raise ConfigurationError("cannot derive a task id from an empty name.")
    if prefix and not re.match(r"^[A-Za-z0-9_-]{1,40}$", prefix):
        raise ConfigurationError(f"task id prefix {prefix!r} is invalid: use up to 40 of [A-Za-z0-9_-].")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^A-Za-z0-9]+", "_", folded).strip("_") or "task"
    room = 64 - len(prefix) - 1 - _HASH_LEN
    stem = stem[:room].rstrip("_") or "t"
    return f"{prefix}{stem}-{digest}"


def task_ids_for(names: Iterable[str], *, prefix: str = "") -> dict[str, str]:
    """Derive task ids for many names at once, proving them distinct (case-insensitively).

    Args:
        names: the names (e.g. input file names); each must appear once.
        prefix: as for `task_id_for`.

    Returns:
        name -> task id, in the order given.

    Raises:
        ConfigurationError: a name is given twice, or (astronomically unlikely) two ids coincide.

    Example:
        >>> ids = task_ids_for(["a.mp4", "A.mp4"])
        >>> len({i.lower() for i in ids.values()})
        2
    """
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        if name in out:
            raise ConfigurationError(f"input {name!r} is given twice; each input becomes exactly one task.")
        task_id = task_id_for(name, prefix=prefix)
        other = seen.get(task_id.lower())
        if other is not None:
            raise ConfigurationError(
                f"inputs {other!r} and {name!r} derive the same task id {task_id!r}; rename one of them."
            )
        seen[task_id.lower()] = name
        out[name] = task_id
    return out


# ----------------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvRef:
    """An argument that is the value of an environment variable on the node, optionally followed by a path.

    Rendered as ``"${NAME}"'suffix'`` on Linux and as a quoted ``%NAME%suffix`` on Windows, so the variable
    expands but its value (which may hold spaces) stays one argument. It only expands when the command line
    runs in a shell (``shell=True`` in `command_line`).

    Args:
        name: the variable's name, e.g. ``AZ_BATCH_TASK_WORKING_DIR``.
        suffix: text appended after the value, e.g. ``"/ffmpeg"``.

    Example:
        >>> print(command_line([EnvRef("AZ_BATCH_NODE_SHARED_DIR", "/tool"), "a b.mp4"]))
        /bin/bash -c '"${AZ_BATCH_NODE_SHARED_DIR}"/tool '"'"'a b.mp4'"'"''
    """

    name: str
    suffix: str = ""

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_#.]*$", self.name):
            raise ConfigurationError(f"environment variable name {self.name!r} is invalid.")


Arg = str | EnvRef

# Characters cmd.exe treats specially; each gets a caret. Quotes are escaped too, so cmd never enters a quoted
# region (where carets would be taken literally) and /c's quote-stripping rule never applies.
_CMD_META = frozenset('()%!^"<>&|')


def _check_arg(arg: str, os: OsFamily) -> None:
    if "\x00" in arg:
        raise ConfigurationError(f"argument {arg!r} contains a NUL character, which no command line can carry.")
    if os == "windows" and ("\n" in arg or "\r" in arg):
        raise ConfigurationError(f"argument {arg!r} contains a line break, which cmd.exe cannot pass on.")


def _msvc_quote(arg: str, *, force: bool = False) -> str:
    """Quote one argument so the Microsoft C runtime (CommandLineToArgvW) parses it back unchanged."""
    if arg and not force and not any(c in arg for c in ' \t\n\v"'):
        return arg
    out = ['"']
    backslashes = 0
    for c in arg:
        if c == "\\":
            backslashes += 1
            continue
        if c == '"':
            out.append("\\" * (2 * backslashes + 1) + '"')
        else:
            out.append("\\" * backslashes + c)
        backslashes = 0
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def _cmd_escape(text: str) -> str:
    return "".join("^" + c if c in _CMD_META else c for c in text)


def _render(arg: Arg, os: OsFamily, *, shell: bool) -> str:
    if isinstance(arg, EnvRef):
        if not shell:
            raise ConfigurationError(
                f"EnvRef({arg.name!r}) only expands in a shell: build the command line with shell=True."
            )
        _check_arg(arg.suffix, os)
        if os == "linux":
            return f'"${{{arg.name}}}"' + (shlex.quote(arg.suffix) if arg.suffix else "")
        # Quote a placeholder with the suffix, escape for cmd, then put %NAME% (unescaped, so it expands)
        # back.
        placeholder = "\x01"
        quoted = _cmd_escape(_msvc_quote(placeholder + arg.suffix, force=True))
        return quoted.replace(placeholder, f"%{arg.name}%")
    _check_arg(arg, os)
    if os == "linux":
        return shlex.quote(arg)
    quoted = _msvc_quote(arg)
    return _cmd_escape(quoted) if shell else quoted


def quote_arg(arg: Arg, *, os: OsFamily = "linux", shell: bool = True) -> str:
    """Quote one argument for a command line on *os*; see `command_line`.

    Use it to splice file names into a shell script of your own (``&&``, pipes), keeping the script's other
    quoting consistent: on Windows inside ``cmd /c`` that means no bare ``"`` in the rest of the script.

    Args:
        arg: the argument, or an `EnvRef`.
        os: ``"linux"`` or ``"windows"``.
        shell: whether the result is read by a shell (bash, cmd.exe) before the program sees it.

    Returns:
        The quoted argument.

    Raises:
        ConfigurationError: the argument holds a character no command line can carry (NUL; a line break on
            Windows).

    Example:
        >>> print(quote_arg("it's 100% done.mp4"))
        'it'"'"'s 100% done.mp4'
    """
    return _render(arg, os, shell=shell)


def command_line(args: Sequence[Arg], *, os: OsFamily = "linux", shell: bool = True) -> str:
    """Build a Batch command line that runs a program with exactly *args*, quoted for the pool's OS.

    Linux: each argument is quoted with `shlex.quote`; with *shell* the line is ``/bin/bash -c '<quoted
    arguments>'`` (the script itself quoted once more), so environment variables in `EnvRef` arguments expand
    and nothing else does. Windows: each argument is quoted for the C runtime's parser; with *shell* the line
    is ``cmd /c <arguments>`` with every cmd.exe metacharacter (``( ) % ! ^ " < > & |``) escaped by a caret,
    so ``%NAME%`` and ``&`` in file names reach the program literally.

    Args:
        args: the program and its arguments; strings are literal, `EnvRef` values expand on the node.
        os: the pool's OS, ``"linux"`` or ``"windows"``.
        shell: wrap in ``/bin/bash -c`` / ``cmd /c`` (needed for `EnvRef`); ``False`` gives the bare line.

    Returns:
        The command line.

    Raises:
        ConfigurationError: *args* is empty, an argument cannot be carried (NUL, or a line break on Windows),
            or an `EnvRef` is used with ``shell=False``.

    Example:
        >>> command_line(["ffmpeg", "-i", "my cat.mp4", "out.gif"], shell=False)
        "ffmpeg -i 'my cat.mp4' out.gif"
        >>> command_line(["ffmpeg", "-i", "50% & more.mp4"], os="windows")
        'cmd /c ffmpeg -i ^"50^% ^& more.mp4^"'
    """
    if not args:
        raise ConfigurationError("a command line needs at least a program to run.")
    joined = " ".join(_render(a, os, shell=shell) for a in args)
    if not shell:
        return joined
    if os == "linux":
        return "/bin/bash -c " + shlex.quote(joined)
    return "cmd /c " + joined


def app_package_dir(application_id: str, version: str | None = None, *, os: OsFamily = "linux") -> str:
    """Return the name of the environment variable holding an application package's folder on a node.

    Batch sets ``AZ_BATCH_APP_PACKAGE_<id>_<version>`` on Linux (``.``, ``-`` and ``#`` become ``_``, case
    kept) and ``AZ_BATCH_APP_PACKAGE_<ID>#<version>`` on Windows; without a version (the default version) the
    suffix is left out. Wrap it in `EnvRef` to use it in a command line.

    Args:
        application_id: the application's id in the Batch account.
        version: the package version, or ``None`` for the application's default version.
        os: the pool's OS.

    Returns:
        The variable's name.

    Example:
        >>> app_package_dir("ffmpeg", "6.1")
        'AZ_BATCH_APP_PACKAGE_ffmpeg_6_1'
    """
    if os == "windows":
        return f"AZ_BATCH_APP_PACKAGE_{application_id.upper()}" + (f"#{version}" if version else "")
    name = f"AZ_BATCH_APP_PACKAGE_{application_id}" + (f"#{version}" if version else "")
    return re.sub(r"[.#-]", "_", name)


# ----------------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------------


_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_FILE_MODE_RE = re.compile(r"^0?[0-7]{3}$")


def _check_relative_path(value: str, what: str) -> None:
    # Checked per resource file of every task: the split into segments only when '..' appears at all.
    if (
        not value
        or value[0] in "/\\"
        or (len(value) > 1 and value[1] == ":" and _DRIVE_RE.match(value))
        or (".." in value and ".." in value.replace("\\", "/").split("/"))
    ):
        raise ConfigurationError(
            f"{what} {value!r} must be a relative path inside the task's working directory, without '..'."
        )


@dataclass(frozen=True, init=False)
class ResourceFileSpec:
    """A file (or a container's blobs) Batch downloads to the node before the task runs.

    Give exactly one source: *http_url* (a blob SAS URL, usually from ``input_sas_url``) or
    *storage_container_url* (a container SAS URL with read and list, optionally narrowed by *blob_prefix*).

    Args:
        file_path: where to put it, relative to the task's working directory (a folder for a container).
        http_url: URL of one file.
        storage_container_url: URL of a container whose blobs are all downloaded.
        blob_prefix: only blobs whose names start with this (with *storage_container_url*).
        file_mode: octal permission bits on Linux, e.g. ``"0755"``.

    Raises:
        ConfigurationError: no source or two, or *file_path* escapes the working directory.
    """

    file_path: str
    http_url: str | None = None
    storage_container_url: str | None = None
    blob_prefix: str | None = None
    file_mode: str | None = None

    def __init__(
        self,
        file_path: str,
        http_url: str | None = None,
        storage_container_url: str | None = None,
        blob_prefix: str | None = None,
        file_mode: str | None = None,
    ) -> None:
        # Written out for speed, as TaskSpec's (one per task's input in a submission); the checks come first.
        if (http_url is None) == (storage_container_url is None):
            raise ConfigurationError("a resource file needs exactly one of http_url or storage_container_url.")
        _check_relative_path(file_path, "resource file path")
        if file_mode is not None and not _FILE_MODE_RE.match(file_mode):
            raise ConfigurationError(f"file_mode {file_mode!r} must be octal, like '0755'.")
        self.__dict__.update(
            file_path=file_path,
            http_url=http_url,
            storage_container_url=storage_container_url,
            blob_prefix=blob_prefix,
            file_mode=file_mode,
        )

    def __repr__(self) -> str:
        return _safe_repr(self)


def resource_file(url: str, file_path: str | None = None, *, file_mode: str | None = None) -> ResourceFileSpec:
    """Make a resource file from a blob URL (with its SAS), named after the blob unless *file_path* is given.

    Args:
        url: the blob's URL with a read SAS.
        file_path: the file's path on the node, relative to the working directory; defaults to the last
            segment of the blob name, URL-decoded.
        file_mode: octal permission bits on Linux.

    Returns:
        The spec.

    Example:
        >>> resource_file("https://a.blob.core.windows.net/in/my%20cat.mp4?sig=x").file_path
        'my cat.mp4'
    """
    if file_path is None:
        path = urllib.parse.urlsplit(url).path
        file_path = urllib.parse.unquote(path.rsplit("/", 1)[-1])
    return ResourceFileSpec(file_path=file_path, http_url=url, file_mode=file_mode)


@dataclass(frozen=True)
class OutputFileSpec:
    """Files Batch uploads from the node to a container after the task runs.

    Args:
        file_pattern: a path or glob relative to the working directory (``"out/*.gif"``, ``"../std*.txt"``).
        container_url: the container's URL with a create/write SAS (``output_container_sas_url``).
        path: the blob name (for a single file) or the virtual folder (for a glob) in the container.
        upload_condition: ``"tasksuccess"`` (default), ``"taskfailure"`` or ``"taskcompletion"``.

    Raises:
        ConfigurationError: an empty pattern or an unknown condition.
    """

    file_pattern: str
    container_url: str
    path: str | None = None
    upload_condition: UploadCondition = "tasksuccess"

    def __post_init__(self) -> None:
        if not self.file_pattern:
            raise ConfigurationError("an output file needs a file_pattern, e.g. '*.gif'.")
        if self.upload_condition not in ("tasksuccess", "taskfailure", "taskcompletion"):
            raise ConfigurationError(
                f"upload_condition {self.upload_condition!r} must be tasksuccess, taskfailure or taskcompletion."
            )

    def __repr__(self) -> str:
        return _safe_repr(self)


def output_files_to(
    container_url: str,
    pattern: str,
    *,
    path: str | None = None,
    upload_condition: UploadCondition = "tasksuccess",
) -> OutputFileSpec:
    """Make an output file spec uploading files matching *pattern* to a container.

    Args:
        container_url: the container URL with a create/write SAS.
        pattern: a path or glob relative to the task's working directory.
        path: the blob name or virtual folder in the container.
        upload_condition: when to upload.

    Returns:
        The spec.

    Example:
        >>> spec = output_files_to("https://a.blob.core.windows.net/out?sig=x", "*.gif", path="task-1")
        >>> spec.upload_condition
        'tasksuccess'
    """
    return OutputFileSpec(
        file_pattern=pattern, container_url=container_url, path=path, upload_condition=upload_condition
    )


@dataclass(frozen=True)
class AppPackageRef:
    """An application package to install on the node: its application id and, optionally, a version.

    Args:
        application_id: the application's id in the Batch account.
        version: the version; ``None`` means the application's default version.
    """

    application_id: str
    version: str | None = None

    def __post_init__(self) -> None:
        if not self.application_id:
            raise ConfigurationError("an application package reference needs an application_id.")


def _tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@dataclass(frozen=True, init=False)
class TaskSpec:
    """One task: what to run, what to download first and upload after, and its limits.

    Args:
        id: the task id (see `task_id_for`).
        command_line: see `command_line`.
        resource_files: files downloaded before the task runs.
        output_files: files uploaded after it runs.
        environment: environment variables for the task.
        application_packages: packages installed on the node before the task runs.
        max_wall_clock_time: seconds the task may run, per attempt; ``None`` for the service's default.
        max_task_retry_count: retries after a non-zero exit (``-1`` for unlimited).
        retention_time: seconds the task's directory is kept on the node after it finishes.
        required_slots: scheduling slots the task occupies (see ``PoolSpec.task_slots_per_node``).
        display_name: a human-readable name (up to 1024 characters).
        elevated: run as the pool's admin auto-user instead of a non-admin one.

    Raises:
        ConfigurationError: an invalid id or a negative limit.

    Example:
        >>> spec = TaskSpec(id=task_id_for("cat.mp4"), command_line=command_line(["echo", "hi"]),
        ...                 max_wall_clock_time=600.0)
        >>> to_task_model(spec).constraints.max_wall_clock_time
        datetime.timedelta(seconds=600)
    """

    id: str
    command_line: str
    resource_files: Sequence[ResourceFileSpec] = ()
    output_files: Sequence[OutputFileSpec] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    application_packages: Sequence[AppPackageRef] = ()
    max_wall_clock_time: float | None = None
    max_task_retry_count: int | None = None
    retention_time: float | None = None
    required_slots: int | None = None
    display_name: str | None = None
    elevated: bool = False

    def __init__(
        self,
        id: str,
        command_line: str,
        resource_files: Sequence[ResourceFileSpec] = (),
        output_files: Sequence[OutputFileSpec] = (),
        environment: Mapping[str, str] | None = None,
        application_packages: Sequence[AppPackageRef] = (),
        max_wall_clock_time: float | None = None,
        max_task_retry_count: int | None = None,
        retention_time: float | None = None,
        required_slots: int | None = None,
        display_name: str | None = None,
        elevated: bool = False,
    ) -> None:
        # Written out, not generated: a frozen dataclass's own __init__ sets each of the 12 fields through
        # object.__setattr__, most of the cost of a spec, and a submission makes one per task. The checks follow.
        if not isinstance(id, str) or not ID_RE.match(id):
            check_id("task", id)  # raises, with the message
        if not command_line or command_line.isspace():
            raise ConfigurationError(f"task {id!r} has an empty command line.")
        if max_wall_clock_time is not None:
            _check_positive("max_wall_clock_time", max_wall_clock_time, allow_zero=False)
        if retention_time is not None:
            _check_positive("retention_time", retention_time)
        if required_slots is not None:
            _check_positive("required_slots", required_slots, allow_zero=False)
        if max_task_retry_count is not None and max_task_retry_count < -1:
            raise ConfigurationError("max_task_retry_count must be -1 (unlimited) or more.")
        self.__dict__.update(
            id=id,
            command_line=command_line,
            resource_files=resource_files if type(resource_files) is tuple else tuple(resource_files),
            output_files=output_files if type(output_files) is tuple else tuple(output_files),
            environment={} if environment is None else dict(environment),
            application_packages=(
                application_packages if type(application_packages) is tuple else tuple(application_packages)
            ),
            max_wall_clock_time=max_wall_clock_time,
            max_task_retry_count=max_task_retry_count,
            retention_time=retention_time,
            required_slots=required_slots,
            display_name=display_name,
            elevated=elevated,
        )

    def __repr__(self) -> str:
        return _safe_repr(self)


@dataclass(frozen=True)
class StartTaskSpec:
    """The command every node of a pool runs when it joins (or restarts).

    Args:
        command_line: see `command_line`.
        resource_files: files downloaded before it runs.
        environment: environment variables.
        wait_for_success: keep tasks off a node until its start task succeeded.
        max_task_retry_count: retries after a non-zero exit.
        elevated: run as the pool's admin auto-user (to install software).
    """

    command_line: str
    resource_files: Sequence[ResourceFileSpec] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    wait_for_success: bool = True
    max_task_retry_count: int | None = None
    elevated: bool = False

    def __post_init__(self) -> None:
        if not self.command_line.strip():
            raise ConfigurationError("a start task needs a command line.")
        object.__setattr__(self, "resource_files", _tuple(self.resource_files))
        object.__setattr__(self, "environment", dict(self.environment))

    def __repr__(self) -> str:
        return _safe_repr(self)


@dataclass(frozen=True)
class PoolSpec:
    """A pool of VMs: size, image, node counts, slots, packages and start task.

    Args:
        id: the pool id.
        vm_size: e.g. ``"standard_d2s_v3"``.
        image_publisher: marketplace image publisher, e.g. ``"canonical"``.
        image_offer: e.g. ``"ubuntu-24_04-lts"``.
        image_sku: e.g. ``"server"``.
        node_agent_sku_id: the node agent for that image, e.g. ``"batch.node.ubuntu 24.04"``.
        image_version: the image version, ``"latest"`` by default.
        os: ``"linux"`` or ``"windows"``; decides command-line quoting.
        dedicated_nodes: dedicated nodes wanted.
        spot_nodes: spot (low-priority) nodes wanted; they may be preempted.
        task_slots_per_node: tasks that may run at once on one node.
        application_packages: packages installed on every node.
        start_task: run on every node as it joins.
        metadata: name/value pairs stored on the pool (aiobatch tags the pools it creates with its run id).
        resize_timeout: seconds allowed for allocating nodes, at least 300; ``None`` for the service's default
            (15 minutes).
        display_name: a human-readable name.

    Raises:
        ConfigurationError: an invalid id, no nodes at all, a count out of range, or a resize timeout under
            5 minutes.

    Example:
        >>> pool = PoolSpec(id="pets", vm_size="standard_d2s_v3", image_publisher="canonical",
        ...                 image_offer="ubuntu-24_04-lts", image_sku="server",
        ...                 node_agent_sku_id="batch.node.ubuntu 24.04", dedicated_nodes=2)
        >>> to_pool_model(pool).target_dedicated_nodes
        2
    """

    id: str
    vm_size: str
    image_publisher: str
    image_offer: str
    image_sku: str
    node_agent_sku_id: str
    image_version: str = "latest"
    os: OsFamily = "linux"
    dedicated_nodes: int = 0
    spot_nodes: int = 0
    task_slots_per_node: int = 1
    application_packages: Sequence[AppPackageRef] = ()
    start_task: StartTaskSpec | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    resize_timeout: float | None = None
    display_name: str | None = None

    def __post_init__(self) -> None:
        check_id("pool", self.id)
        if self.os not in ("linux", "windows"):
            raise ConfigurationError(f"pool os must be 'linux' or 'windows', not {self.os!r}.")
        if not self.vm_size:
            raise ConfigurationError(f"pool {self.id!r} needs a vm_size, e.g. 'standard_d2s_v3'.")
        if self.dedicated_nodes < 0 or self.spot_nodes < 0:
            raise ConfigurationError(f"pool {self.id!r}: node counts cannot be negative.")
        if self.dedicated_nodes + self.spot_nodes == 0:
            raise ConfigurationError(
                f"pool {self.id!r} asks for no nodes and could run no task: set dedicated_nodes or spot_nodes."
            )
        if not 1 <= self.task_slots_per_node <= 256:
            raise ConfigurationError(f"pool {self.id!r}: task_slots_per_node must be 1 to 256.")
        if self.resize_timeout is not None and not self.resize_timeout >= 300:
            raise ConfigurationError(
                f"pool {self.id!r}: resize_timeout must be at least 300 seconds (Batch's minimum is 5 minutes),"
                f" not {self.resize_timeout!r}; leave it None for the service's default of 15 minutes."
            )
        object.__setattr__(self, "application_packages", _tuple(self.application_packages))
        object.__setattr__(self, "metadata", dict(self.metadata))

    def __repr__(self) -> str:
        return _safe_repr(self)

    @classmethod
    def from_image(
        cls, image: str, id: str, vm_size: str = "standard_d2s_v3", *, dedicated_nodes: int = 1, **options: Any
    ) -> PoolSpec:
        """A pool of a common marketplace image by its short name (see `IMAGES`): an id, a size and node counts.

        Args:
            image: ``"ubuntu-22.04"``, ``"ubuntu-24.04"`` or ``"windows-2022"``.
            id: the pool id.
            vm_size: the VM size.
            dedicated_nodes: dedicated nodes wanted.
            **options: any other `PoolSpec` field (``spot_nodes``, ``task_slots_per_node``, ``start_task``, ...).

        Raises:
            ConfigurationError: an unknown image name, or an invalid spec.

        Example:
            >>> PoolSpec.from_image("ubuntu-22.04", "words").image_offer
            '0001-com-ubuntu-server-jammy'
        """
        preset = IMAGES.get(image)
        if preset is None:
            raise ConfigurationError(f"unknown image {image!r}: use one of {', '.join(sorted(IMAGES))}.")
        return cls(
            id=id,
            vm_size=vm_size,
            image_publisher=preset.publisher,
            image_offer=preset.offer,
            image_sku=preset.sku,
            node_agent_sku_id=preset.node_agent_sku_id,
            os=preset.os,
            dedicated_nodes=dedicated_nodes,
            **options,
        )

    @classmethod
    def ubuntu_22_04(
        cls, id: str, vm_size: str = "standard_d2s_v3", *, dedicated_nodes: int = 1, **options: Any
    ) -> PoolSpec:
        """A Linux pool on Canonical's Ubuntu Server 22.04 LTS (node agent ``batch.node.ubuntu 22.04``).

        Batch ends its support of this node agent on 30 June 2027; prefer `ubuntu_24_04` for new pools.

        Example:
            >>> PoolSpec.ubuntu_22_04("words", dedicated_nodes=2).node_agent_sku_id
            'batch.node.ubuntu 22.04'
        """
        return cls.from_image("ubuntu-22.04", id, vm_size, dedicated_nodes=dedicated_nodes, **options)

    @classmethod
    def ubuntu_24_04(
        cls, id: str, vm_size: str = "standard_d2s_v3", *, dedicated_nodes: int = 1, **options: Any
    ) -> PoolSpec:
        """A Linux pool on Canonical's Ubuntu Server 24.04 LTS (node agent ``batch.node.ubuntu 24.04``).

        Example:
            >>> spec = PoolSpec.ubuntu_24_04("words", "standard_d4s_v3", dedicated_nodes=2, task_slots_per_node=4)
            >>> spec.image_offer, spec.os
            ('ubuntu-24_04-lts', 'linux')
        """
        return cls.from_image("ubuntu-24.04", id, vm_size, dedicated_nodes=dedicated_nodes, **options)

    @classmethod
    def windows_server_2022(
        cls, id: str, vm_size: str = "standard_d2s_v3", *, dedicated_nodes: int = 1, **options: Any
    ) -> PoolSpec:
        """A Windows pool on Windows Server 2022 Datacenter, Server Core, small disk (``batch.node.windows amd64``).

        Command lines are quoted for ``cmd /c`` on it (``os="windows"``).

        Example:
            >>> PoolSpec.windows_server_2022("win").os
            'windows'
        """
        return cls.from_image("windows-2022", id, vm_size, dedicated_nodes=dedicated_nodes, **options)


@dataclass(frozen=True)
class ImagePreset:
    """A marketplace image and the Batch node agent that runs on it.

    Attributes:
        publisher: e.g. ``"canonical"``.
        offer: e.g. ``"ubuntu-24_04-lts"``.
        sku: e.g. ``"server"``.
        node_agent_sku_id: e.g. ``"batch.node.ubuntu 24.04"``.
        os: ``"linux"`` or ``"windows"``.
    """

    publisher: str
    offer: str
    sku: str
    node_agent_sku_id: str
    os: OsFamily

    def as_tuple(self) -> tuple[str, str, str, str]:
        """``(publisher, offer, sku, node_agent_sku_id)``."""
        return (self.publisher, self.offer, self.sku, self.node_agent_sku_id)


#: The images `PoolSpec.from_image` knows, by short name (as Batch's list of supported images names them).
IMAGES: Mapping[str, ImagePreset] = {
    "ubuntu-22.04": ImagePreset(
        "canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", "batch.node.ubuntu 22.04", "linux"
    ),
    "ubuntu-24.04": ImagePreset("canonical", "ubuntu-24_04-lts", "server", "batch.node.ubuntu 24.04", "linux"),
    "windows-2022": ImagePreset(
        "microsoftwindowsserver",
        "windowsserver",
        "2022-datacenter-core-smalldisk",
        "batch.node.windows amd64",
        "windows",
    ),
}


# ----------------------------------------------------------------------------------------------------
# Conversion to azure-batch 15.x models
# ----------------------------------------------------------------------------------------------------


def _resource_file_model(spec: ResourceFileSpec) -> models.ResourceFile:
    return models.ResourceFile(
        http_url=spec.http_url,
        storage_container_url=spec.storage_container_url,
        blob_prefix=spec.blob_prefix,
        file_path=spec.file_path,
        file_mode=spec.file_mode,
    )


def _output_file_model(spec: OutputFileSpec) -> models.OutputFile:
    return models.OutputFile(
        file_pattern=spec.file_pattern,
        destination=models.OutputFileDestination(
            container=models.OutputFileBlobContainerDestination(container_url=spec.container_url, path=spec.path)
        ),
        upload_options=models.OutputFileUploadConfiguration(upload_condition=spec.upload_condition),
    )


def _environment_model(env: Mapping[str, str]) -> list[models.EnvironmentSetting] | None:
    return [models.EnvironmentSetting(name=k, value=v) for k, v in env.items()] or None


def _packages_model(refs: Sequence[AppPackageRef]) -> list[models.BatchApplicationPackageReference] | None:
    return [
        models.BatchApplicationPackageReference(application_id=r.application_id, version=r.version) for r in refs
    ] or None


def _user_identity(elevated: bool, scope: str) -> models.UserIdentity | None:
    if not elevated:
        return None
    return models.UserIdentity(auto_user=models.AutoUserSpecification(scope=scope, elevation_level="admin"))


def to_task_model(spec: TaskSpec) -> models.BatchTaskCreateOptions:
    """Convert a task spec to the azure-batch model that ``create_task_collection`` sends.

    Args:
        spec: the task.

    Returns:
        A ``BatchTaskCreateOptions``; its repr shows SAS URLs, so never log it.
    """
    constraints = None
    if any(v is not None for v in (spec.max_wall_clock_time, spec.max_task_retry_count, spec.retention_time)):
        constraints = models.BatchTaskConstraints(
            max_wall_clock_time=_seconds(spec.max_wall_clock_time),
            retention_time=_seconds(spec.retention_time),
            max_task_retry_count=spec.max_task_retry_count,
        )
    return models.BatchTaskCreateOptions(
        id=spec.id,
        command_line=spec.command_line,
        display_name=spec.display_name,
        resource_files=[_resource_file_model(r) for r in spec.resource_files] or None,
        output_files=[_output_file_model(o) for o in spec.output_files] or None,
        environment_settings=_environment_model(spec.environment),
        application_package_references=_packages_model(spec.application_packages),
        constraints=constraints,
        required_slots=spec.required_slots,
        user_identity=_user_identity(spec.elevated, "task"),
    )


def _start_task_model(spec: StartTaskSpec | None) -> models.BatchStartTask | None:
    if spec is None:
        return None
    return models.BatchStartTask(
        command_line=spec.command_line,
        resource_files=[_resource_file_model(r) for r in spec.resource_files] or None,
        environment_settings=_environment_model(spec.environment),
        user_identity=_user_identity(spec.elevated, "pool"),
        max_task_retry_count=spec.max_task_retry_count,
        wait_for_success=spec.wait_for_success,
    )


def _pool_fields(spec: PoolSpec) -> dict[str, Any]:
    return {
        "vm_size": spec.vm_size,
        "display_name": spec.display_name,
        "virtual_machine_configuration": models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(
                publisher=spec.image_publisher,
                offer=spec.image_offer,
                sku=spec.image_sku,
                version=spec.image_version,
            ),
            node_agent_sku_id=spec.node_agent_sku_id,
        ),
        "resize_timeout": _seconds(spec.resize_timeout),
        "target_dedicated_nodes": spec.dedicated_nodes,
        "target_low_priority_nodes": spec.spot_nodes,
        "task_slots_per_node": spec.task_slots_per_node,
        "start_task": _start_task_model(spec.start_task),
        "application_package_references": _packages_model(spec.application_packages),
        "metadata": [models.BatchMetadataItem(name=k, value=v) for k, v in spec.metadata.items()] or None,
    }


def to_pool_model(spec: PoolSpec) -> models.BatchPoolCreateOptions:
    """Convert a pool spec to the azure-batch model that ``create_pool`` sends.

    Args:
        spec: the pool.

    Returns:
        A ``BatchPoolCreateOptions``; its repr may show SAS URLs (start task files), so never log it.
    """
    return models.BatchPoolCreateOptions(id=spec.id, **_pool_fields(spec))


def to_pool_specification(spec: PoolSpec) -> models.BatchPoolSpecification:
    """Convert a pool spec to the pool part of a job's auto-pool (``BatchAutoPoolSpecification.pool``).

    The spec's id is not used: the service names auto-pools itself (give ``auto_pool_id_prefix`` there).

    Args:
        spec: the pool.

    Returns:
        A ``BatchPoolSpecification``.
    """
    return models.BatchPoolSpecification(**_pool_fields(spec))
