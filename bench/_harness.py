"""What every case shares: repeated rounds and medians, the local services as processes, results and the table.

The Batch emulator runs as its own process (``python -m aiobatch.emulator``), as the service would: the client
under test and the service do not share an event loop, and the emulator's memory is its own to measure.
Azurite runs as its own ``node`` process through `aiobatch._azurite.AzuriteServer`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from azure.core.credentials import AzureNamedKeyCredential

from aiobatch.emulator import DEFAULT_ACCOUNT_KEY, DEFAULT_ACCOUNT_NAME

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
QUICK_RESULTS_DIR = ROOT / "build" / "bench-quick"  # a --quick run never overwrites the full run's results
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
MISSED_ANCHOR = "missed"  # the docs' "why, and what would close it" section: `## ... {#missed}`
TABLE_START = "<!-- bench:table:start -->"
TABLE_END = "<!-- bench:table:end -->"

MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, or NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median of per-round ratios: each round's two variants ran back to back, under the same load."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True) if b])


def fmt(value: float, digits: int = 0) -> str:
    """A number for the table: thousands separated, NaN as an em dash."""
    if value != value:  # NaN
        return "—"
    return f"{value:,.{digits}f}"


@dataclass
class Series:
    """Repeated measurements of one variant (e.g. MB/s per round)."""

    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median of the rounds."""
        return median(self.values)

    def spread(self, digits: int = 0) -> str:
        """``min-max`` of the rounds, for the table."""
        if len(self.values) < 2:
            return ""
        return f"{fmt(min(self.values), digits)}-{fmt(max(self.values), digits)}"


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One of the issue's targets and how this run did against it."""

    name: str
    goal: str
    measured: str
    met: bool
    note: str = ""


@dataclass
class CaseResult:
    """What one case measured: a detail table, targets, and the raw numbers (for the JSON)."""

    case: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def source_version() -> str:
    """The commit the code under test is at, with ``+changes`` when ``src/`` or ``bench/`` differs from it.

    The benchmark's own code counts (it decides what is measured); its results files do not (a run writes them).
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "src", "bench", ":(exclude)bench/results")
    return commit + ("+changes" if dirty else "")


def machine_info(version: str | None = None) -> dict[str, Any]:
    """Where and when this run happened, and how busy the machine was."""
    return {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": version or source_version(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def write_case(result: CaseResult, run: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<results_dir>/<case>.json`` (``bench/results/`` by default)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result.case}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"run": run, **asdict(result)}, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


CASE_ORDER = ("upload", "submit", "monitor", "e2e", "scale", "fanout", "scheduler", "simulated")


def _load_all(results_dir: Path) -> list[dict[str, Any]]:
    found = []
    for case in CASE_ORDER:
        path = results_dir / f"{case}.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_markdown(results_dir: Path = RESULTS_DIR, *, docs_link: str = f"#{MISSED_ANCHOR}") -> str:
    """The results of every case on record (the latest run of each) as markdown.

    Args:
        results_dir: where the cases' JSON files are.
        docs_link: where a missed target's verdict points: the docs' section on why, and what would close it.
    """
    cases = _load_all(results_dir)
    if not cases:
        return "_No results yet: run `nox -s bench`._\n"
    parts: list[str] = []
    target_rows = []
    missed = f"**missed** ([why; what would close it]({docs_link}))"
    for data in cases:
        for t in data["targets"]:
            target_rows.append([t["name"], t["goal"], t["measured"], "met" if t["met"] else missed])
    whens = sorted(d["run"]["when"] for d in cases)
    commits = sorted({f"`{d['run'].get('commit') or '?'}`" for d in cases})
    quick = " (--quick)" if any(d["run"].get("quick") for d in cases) else ""
    first = cases[0]["run"]
    loads = ", ".join(f"{d['case']} {d['run']['load_average'][0]}" for d in cases)
    parts.append(
        f"Run{quick}: {whens[0]} to {whens[-1][11:]} at {', '.join(commits)}; {first['cpus']} CPUs, "
        f"{first['memory_gib']} GiB, Python {first['python']}; load average (1 min) at the start of each case: "
        f"{loads}."
    )
    parts.append("### Targets\n\n" + _md_table(["Target", "Goal", "Measured", "Verdict"], target_rows))
    for data in cases:
        section = f"### {data['title']}\n\n" + _md_table(data["headers"], data["rows"])
        if data["notes"]:
            section += "\n\n" + "\n".join(f"- {n}" for n in data["notes"])
        parts.append(section)
    return "\n\n".join(parts) + "\n"


def write_tables(results_dir: Path = RESULTS_DIR) -> str:
    """Write ``<results_dir>/results.md``; for ``bench/results/``, the table in ``docs/benchmarks.md`` too.

    Returns the markdown of the docs' table (or of the results file, for another *results_dir*).
    """
    docs = DOCS_PAGE.resolve()
    link = os.path.relpath(docs, results_dir.resolve()) + f"#{MISSED_ANCHOR}"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.md").write_text("# Benchmark results\n\n" + render_markdown(results_dir, docs_link=link))
    markdown = render_markdown(results_dir)
    if results_dir.resolve() == RESULTS_DIR.resolve() and docs.is_file():
        page = docs.read_text()
        start, end = page.find(TABLE_START), page.find(TABLE_END)
        if start != -1 and end > start:
            page = page[: start + len(TABLE_START)] + "\n\n" + markdown + "\n" + page[end:]
            docs.write_text(page)
    return markdown


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------


def vm_hwm(pid: int) -> int:
    """A process's peak resident memory (VmHWM) in bytes, 0 when unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class EmulatorProcess:
    """``python -m aiobatch.emulator`` on a free loopback port, as a context manager.

    Args:
        workdir: node directories and the emulator's log.
        apps_dir: application packages.
        allocation_delay: seconds until a pool's nodes exist.
        node_start_delay: seconds a node takes to boot.
        extra_args: more command-line options (``--simulate-tasks ...``, ``--clock-speed N``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        apps_dir: Path | None = None,
        allocation_delay: float = 0.2,
        node_start_delay: float = 0.1,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.apps_dir = apps_dir
        self.allocation_delay = allocation_delay
        self.node_start_delay = node_start_delay
        self.account_name = DEFAULT_ACCOUNT_NAME
        self.account_key = DEFAULT_ACCOUNT_KEY
        self.endpoint = ""
        self._process: subprocess.Popen[str] | None = None

    @property
    def credential(self) -> AzureNamedKeyCredential:
        """The Shared Key credential of the emulator's account."""
        return AzureNamedKeyCredential(self.account_name, self.account_key)

    @property
    def pid(self) -> int:
        """The emulator's process id."""
        assert self._process is not None
        return self._process.pid

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def peak_rss(self) -> int:
        """Peak resident memory so far, in bytes."""
        return vm_hwm(self.pid)

    def cpu_seconds(self, *, children: bool = False) -> float:
        """CPU time the emulator process has used (user + system); *children*: with its finished tasks'."""
        times = psutil.Process(self.pid).cpu_times()
        spent = times.user + times.system
        if children:
            spent += times.children_user + times.children_system
        return float(spent)

    def __enter__(self) -> EmulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "aiobatch.emulator",
            "--port",
            "0",
            "--workdir",
            str(self.workdir / "nodes"),
            "--allocation-delay",
            str(self.allocation_delay),
            "--node-start-delay",
            str(self.node_start_delay),
        ]
        if self.apps_dir is not None:
            args += ["--apps", str(self.apps_dir)]
        args += self.extra_args
        log = (self.workdir / "emulator.log").open("w")
        self._process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True, cwd=self.workdir
        )
        log.close()
        assert self._process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on (\S+)", line)
            if match:
                self.endpoint = match.group(1)
                return self
        self.__exit__(None, None, None)
        raise RuntimeError(f"the emulator did not start; see {self.workdir / 'emulator.log'}")

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


@contextlib.contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...`` then ``elapsed()`` is the block's wall time in seconds."""
    start = time.perf_counter()
    end: list[float] = []
    try:
        yield lambda: (end[0] if end else time.perf_counter()) - start
    finally:
        end.append(time.perf_counter())


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
