"""The live processes below this one, read from ``/proc``: for ``aiobatch local``, the demo and the tests.

Private: ``aiobatch local`` ends what a command left running with it, the demo checks that nothing outlived it,
and the tests check the same after a run. Blocking (it reads ``/proc``): call it from a worker thread in async code.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["child_processes"]


def child_processes(pid: int | None = None) -> list[tuple[int, str]]:
    """Live descendants of a process (this one by default) as ``(pid, command)``; Linux only ([] elsewhere)."""
    root = pid or os.getpid()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # a zombie has exited; only its parent's wait is missing
            continue
        parents[int(entry.name)] = int(fields[1])
        commands[int(entry.name)] = cmd
    found: list[tuple[int, str]] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append((child, commands.get(child, "")))
                frontier.append(child)
    return found
