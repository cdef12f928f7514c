"""A task's ``exitConditions``: which ``exitOptions`` apply to how an attempt ended.

As the API documents `ExitConditions`: an exit code listed in ``exitCodes`` (or inside one of ``exitCodeRanges``)
takes its mapping's options; a task that failed to start (resource files, the command not found) takes
``preProcessingError``; a failed output upload takes ``fileUploadError`` unless its exit code was listed, which
takes precedence; anything else that failed (an unlisted non-zero exit code, the wall clock) takes ``default``, as
do a missing ``preProcessingError`` or ``fileUploadError``. Exit code 0 behaves by default unless listed.

Within the chosen options, a missing ``jobAction`` is ``none`` for a success and ``terminate`` otherwise; a missing
``dependencyAction`` is ``satisfy`` for a success and ``block`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._types import FailureInfo

#: Failure codes of an attempt that never ran its process for a reason other than the task's start:
#: the user (or its job) ended it, or the emulator itself failed. They take ``default``.
_NOT_PRE_PROCESSING = frozenset({"TaskEnded", "NodeError"})


@dataclass(frozen=True)
class ExitOptions:
    """What the service does once a task completes: to its job, and to the tasks that depend on it."""

    job_action: str  # none | disable | terminate
    dependency_action: str  # satisfy | block


def _listed(conditions: Mapping[str, Any], exit_code: int | None) -> Mapping[str, Any] | None:
    """The options ``exitCodes`` or ``exitCodeRanges`` give this exit code, if any."""
    if exit_code is None:
        return None
    for mapping in conditions.get("exitCodes") or []:
        if mapping.get("code") == exit_code:
            return dict(mapping.get("exitOptions") or {})
    for mapping in conditions.get("exitCodeRanges") or []:
        if mapping.get("start", 0) <= exit_code <= mapping.get("end", -1):
            return dict(mapping.get("exitOptions") or {})
    return None


def exit_options(
    conditions: Mapping[str, Any] | None, exit_code: int | None, failure: FailureInfo | None
) -> ExitOptions:
    """The exit options that apply to a task completed with ``exit_code`` and ``failure`` (None for a success)."""
    conditions = conditions or {}
    chosen = _listed(conditions, exit_code)
    if chosen is None and failure is not None:
        if failure.code.startswith("FileUpload"):
            chosen = conditions.get("fileUploadError")
        elif exit_code is None and failure.code not in _NOT_PRE_PROCESSING:
            chosen = conditions.get("preProcessingError")
        if chosen is None:
            chosen = conditions.get("default")
    chosen = chosen or {}
    ok = failure is None
    return ExitOptions(
        job_action=str(chosen.get("jobAction") or ("none" if ok else "terminate")).lower(),
        dependency_action=str(chosen.get("dependencyAction") or ("satisfy" if ok else "block")).lower(),
    )


__all__ = ["ExitOptions", "exit_options"]
