"""The public face: every public name is in ``__all__``, importable, and documented; entry points show an example."""

from __future__ import annotations
import __future__

import ast
import doctest
import inspect
import re
import types

import pytest

import aiobatch

#: Every public method of `Client`: each is something a user calls, so each shows how.
ENTRY_POINTS = [
    "from_env",
    "open",
    "aclose",
    "sweep_run",
    "ensure_container",
    "upload_files",
    "input_sas_url",
    "output_container_sas_url",
    "download_outputs",
    "delete_containers",
    "ensure_pool",
    "wait_for_pool_ready",
    "delete_pool",
    "create_job",
    "submit_tasks",
    "watch_tasks",
    "wait_for_tasks",
    "terminate_job",
    "delete_job",
    "map_files",
]

#: The public functions of the package (not classes, not constants): each is called directly, so each shows how.
FUNCTIONS = [n for n in aiobatch.__all__ if inspect.isfunction(getattr(aiobatch, n))]


def _client_methods() -> set[str]:
    return {
        name
        for name, member in vars(aiobatch.Client).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod)))
    }


def _assert_example(name: str, doc: str) -> None:
    """The docstring has an ``Example:`` section whose ``>>>`` lines are valid Python (top-level await allowed)."""
    assert "Example:" in doc and ">>>" in doc, f"{name} needs an example"
    examples = doctest.DocTestParser().get_examples(doc.split("Example:", 1)[1])
    assert examples, f"{name}: the example has no >>> lines"
    for example in examples:
        compile(example.source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


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


def test_entry_points_are_every_public_method_of_the_client() -> None:
    assert set(ENTRY_POINTS) == _client_methods()


@pytest.mark.parametrize("method", ENTRY_POINTS)
def test_entry_points_have_an_example(method: str) -> None:
    _assert_example(f"Client.{method}", inspect.getdoc(getattr(aiobatch.Client, method)) or "")


def test_the_public_functions_are_found() -> None:
    assert {"command_line", "resource_file", "output_files_to", "task_ids_for", "redact"} <= set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_public_functions_have_an_example(name: str) -> None:
    _assert_example(name, inspect.getdoc(getattr(aiobatch, name)) or "")


def test_the_client_and_errors_are_importable_from_the_top() -> None:
    from aiobatch import AiobatchError, Client, PoolResizeError, SubmissionError, TaskEvent

    assert issubclass(PoolResizeError, AiobatchError) and issubclass(SubmissionError, AiobatchError)
    assert Client.__module__ == "aiobatch" and TaskEvent.__module__ == "aiobatch"


def test_the_client_never_imports_the_emulator_nor_runs_a_loop() -> None:
    import pathlib

    imports_emulator = re.compile(r"^\s*(from|import)\s+(aiobatch\.emulator|\.emulator|\. import emulator)", re.M)
    root = pathlib.Path(aiobatch.__file__).parent
    for path in root.glob("_*.py"):
        text = path.read_text(encoding="utf-8")
        assert not imports_emulator.search(text), path.name
        assert "asyncio.run(" not in text, path.name


def test_the_pet_example_is_outside_the_core() -> None:
    import subprocess
    import sys

    import aiobatch.local

    pipeline_helpers = {"gifs", "plural", "child_processes", "convert_videos", "run_demo", "write_sample_videos"}
    assert not pipeline_helpers & set(aiobatch.__all__)
    assert not pipeline_helpers & set(aiobatch.local.__all__)
    # Importing the library and its progress displays loads none of the example's modules.
    probe = "import sys, aiobatch, aiobatch.progress; print([m for m in sys.modules if 'demo' in m or 'gifs' in m])"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
