"""The tutorial's code runs as the page says: docs/tutorial.md includes these files, so what is tested is what is read.

- ``docs/snippets/count_words.py``, the script: under ``aiobatch local -- python count_words.py`` (the real console
  script, emulator and Azurite of its own), and as a plain script against the ``local_services`` fixture for the
  re-runs: a re-run does only what failed, and once the bad file is gone it does nothing at all.
- ``docs/snippets/count_words_cell.py``, the notebook cell: compiled with top-level ``await`` as Jupyter compiles
  it, and run on the test's event loop.

Each run must leave no pool, job or container behind (the script's client cleans up).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aiobatch.local import LocalServices

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "docs" / "snippets"
SCRIPT = SNIPPETS / "count_words.py"
CELL = SNIPPETS / "count_words_cell.py"
TUTORIAL = ROOT / "docs" / "tutorial.md"

# The tutorial's texts: names with spaces, shell metacharacters and other scripts, and one file that is not UTF-8.
TEXTS = {
    "my cat.txt": b"the cat sat on the mat\n",
    "Grüße & co.txt": "Grüße aus Köln, schöne Grüße\n".encode(),
    "猫.txt": "猫が 好き です\n".encode(),
    "broken.txt": b"ok \xff\xfe broken\n",
}
WORDS = {"my cat.txt": 6, "Grüße & co.txt": 5, "猫.txt": 3}


def _write_texts(folder: Path) -> Path:
    texts = folder / "texts"
    texts.mkdir()
    for name, data in TEXTS.items():
        (texts / name).write_bytes(data)
    (texts / "notes.md").write_text("not a .txt: the glob leaves it out\n")
    return texts


def _aiobatch() -> str:
    script = shutil.which("aiobatch", path=str(Path(sys.executable).parent)) or shutil.which("aiobatch")
    assert script, "the aiobatch console script is not installed next to this Python"
    return script


def _script(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=240, check=False
    )


async def _script_beside(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`_script` without blocking the event loop, where the fixture's emulator serves the script."""
    with anyio.fail_after(240):
        done = await anyio.run_process(args, cwd=cwd, env={**os.environ, **env}, check=False)
    return subprocess.CompletedProcess(args, done.returncode, done.stdout.decode(), done.stderr.decode())


def _counted(out: str) -> dict[str, int]:
    found = {}
    for line in out.splitlines():
        name, sep, rest = line.rpartition(": ")
        if sep and rest.endswith(" words"):
            found[name] = int(rest.removesuffix(" words"))
    return found


def test_the_tutorial_includes_its_files() -> None:
    page = TUTORIAL.read_text()
    assert '--8<-- "count_words.py"' in page
    assert '--8<-- "count_words_cell.py"' in page


def test_the_script_under_aiobatch_local(tmp_path: Path) -> None:
    _write_texts(tmp_path)
    env = {"TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    done = _script([_aiobatch(), "local", "--", sys.executable, str(SCRIPT), "texts", "counts"], tmp_path, env)
    assert done.returncode == 1, done.stderr  # the command's status: one input failed
    assert _counted(done.stdout) == WORDS, done.stdout
    for name, words in WORDS.items():
        assert (tmp_path / "counts" / name.replace(".txt", ".count")).read_text().strip() == str(words)
    assert "broken.txt: failed (exit code 1" in done.stdout
    assert "iconv: illegal input sequence at position 3" in done.stdout
    assert "3 succeeded, 1 failed, 0 skipped" in done.stdout
    assert "notes" not in done.stdout
    assert "aiobatch local: stopping" in done.stderr


async def _left_behind(services: LocalServices, before: set[str]) -> list[str]:
    """What the test's runs left in the accounts: the session's Azurite also holds other tests' containers."""
    with anyio.move_on_after(15):
        while set(await services.leftovers(wait=0)) - before:
            await anyio.sleep(0.2)
    return sorted(set(await services.leftovers(wait=0)) - before)


@pytest.mark.anyio
async def test_re_runs_do_only_what_is_missing(local_services: LocalServices, tmp_path: Path) -> None:
    texts = _write_texts(tmp_path)
    command = [sys.executable, str(SCRIPT), "texts", "counts"]
    before = set(await local_services.leftovers(wait=0))

    first = await _script_beside(command, tmp_path, local_services.environ)
    assert first.returncode == 1, first.stderr
    assert _counted(first.stdout) == WORDS
    assert await _left_behind(local_services, before) == []

    again = await _script_beside(command, tmp_path, local_services.environ)
    assert again.returncode == 1, again.stderr
    assert _counted(again.stdout) == {}, "a re-run counted again what was already counted"
    assert "0 succeeded, 1 failed, 3 skipped" in again.stdout
    assert "iconv: illegal input sequence" in again.stdout

    (texts / "broken.txt").unlink()
    last = await _script_beside(command, tmp_path, local_services.environ)
    assert last.returncode == 0, last.stdout + last.stderr
    assert "0 succeeded, 0 failed, 3 skipped" in last.stdout
    assert "job map-" not in last.stdout  # nothing to run, so no job was created
    assert await _left_behind(local_services, before) == []


@pytest.mark.anyio
async def test_the_notebook_cell(
    local_services: LocalServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_texts(tmp_path)
    (tmp_path / "texts" / "broken.txt").unlink()
    before = set(await local_services.leftovers(wait=0))
    monkeypatch.chdir(tmp_path)
    for name, value in local_services.environ.items():
        monkeypatch.setenv(name, value)
    code = compile(CELL.read_text(), str(CELL), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, object] = {}
    coroutine = eval(code, namespace)  # with top-level await, a coroutine to await, as IPython does
    assert coroutine is not None
    await coroutine
    assert namespace["words"] == WORDS
    out = capsys.readouterr().out
    assert "3 succeeded, 0 failed, 0 skipped" in out
    assert "counts/my cat.count" in out
    assert await _left_behind(local_services, before) == []
