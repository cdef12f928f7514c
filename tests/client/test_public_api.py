"""The public face: every public name is in ``__all__``, importable, and documented; entry points show an example."""

from __future__ import annotations
import __future__

import inspect
import re
import types

import pytest

import aiobatch

ENTRY_POINTS = [
    "from_env",
    "upload_files",
    "ensure_pool",
    "wait_for_pool_ready",
    "create_job",
    "submit_tasks",
    "watch_tasks",
    "wait_for_tasks",
    "download_outputs",
]


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(aiobatch).items()
        if not name.startswith("_") and not isinstance(value, (types.ModuleType, __future__._Feature))
    }
    assert public - set(aiobatch.__all__) == set()


def test_all_names_exist_and_are_unique() -> None:
    assert len(aiobatch.__all__) == len(set(aiobatch.__all__))
    for name in aiobatch.__all__:
        assert hasattr(aiobatch, name), name


@pytest.mark.parametrize("name", [n for n in aiobatch.__all__ if not n.startswith("_") and n != "RUN_ID_KEY"])
def test_every_public_name_has_a_docstring(name: str) -> None:
    value = getattr(aiobatch, name)
    assert inspect.getdoc(value), f"{name} has no docstring"
    if inspect.isclass(value):
        for attr, member in vars(value).items():
            if attr.startswith("_"):
                continue
            if callable(member) or isinstance(member, (property, classmethod, staticmethod)):
                assert inspect.getdoc(getattr(value, attr)), f"{name}.{attr} has no docstring"


@pytest.mark.parametrize("method", ENTRY_POINTS)
def test_entry_points_have_an_example(method: str) -> None:
    doc = inspect.getdoc(getattr(aiobatch.Client, method)) or ""
    assert "Example:" in doc and ">>>" in doc, f"Client.{method} needs an example"


def test_the_client_and_errors_are_importable_from_the_top() -> None:
    from aiobatch import AiobatchError, Client, PoolResizeError, SubmissionError, TaskEvent

    assert issubclass(PoolResizeError, AiobatchError) and issubclass(SubmissionError, AiobatchError)
    assert Client.__module__ == "aiobatch._client" and TaskEvent.__module__ == "aiobatch._watch"


def test_the_client_never_imports_the_emulator_nor_runs_a_loop() -> None:
    import pathlib

    imports_emulator = re.compile(r"^\s*(from|import)\s+(aiobatch\.emulator|\.emulator|\. import emulator)", re.M)
    root = pathlib.Path(aiobatch.__file__).parent
    for path in root.glob("_*.py"):
        text = path.read_text(encoding="utf-8")
        assert not imports_emulator.search(text), path.name
        assert "asyncio.run(" not in text, path.name
