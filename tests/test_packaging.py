"""The distribution as users see it: one name and one version, extras that exist, supported versions that hold.

``nox -s build`` checks the built wheel and sdist and smoke-tests the wheel installed outside the checkout; these
tests hold the words around them together: every ``pip install ...[extra]`` in the README, the docs, the examples
and the noxfile names an extra that pyproject.toml defines, under the current distribution name, and the
README's "Supported versions" table says what pyproject.toml and the Azurite module enforce.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

import aiobatch
from aiobatch import _azurite

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
DISTRIBUTION: str = PROJECT["name"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]


def _documents() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "noxfile.py"]
    found += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "docs" / "snippets").rglob("*.py"))
    found += sorted(path for path in (ROOT / "examples").rglob("*") if path.suffix in (".md", ".py", ".ipynb"))
    return [path for path in found if path.is_file()]


def _install_commands(text: str) -> list[str]:
    """The arguments of every ``pip install`` in *text*, up to the end of its line, code span or string."""
    return [match.group(1) for match in re.finditer(r"pip install ([^\n`\\]*)", text)]


def _requirements(arguments: str) -> list[str]:
    try:
        words = shlex.split(arguments.split("#", 1)[0].split("&&", 1)[0])
    except ValueError:  # an unbalanced quote: a fragment inside a string in a notebook's JSON or Python code
        words = arguments.replace("'", " ").replace('"', " ").split()
    return [word for word in words if word and not word.startswith("-")]


def test_the_distribution_name_and_the_one_version() -> None:
    assert DISTRIBUTION == "aiobatch-azure"
    assert PROJECT["dynamic"] == ["version"]
    assert "version" not in PROJECT
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "src/aiobatch/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|[ab]\d+|rc\d+)?", aiobatch.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {re.escape(aiobatch.__version__)}\b", changelog, re.MULTILINE), "CHANGELOG lacks it"


def test_readme_and_docs_name_the_distribution() -> None:
    for path in (ROOT / "README.md", ROOT / "docs" / "quickstart.md"):
        assert f"pip install {DISTRIBUTION}" in path.read_text(encoding="utf-8") or (
            f"pip install '{DISTRIBUTION}[" in path.read_text(encoding="utf-8")
        ), path


def test_every_extra_named_in_an_install_command_exists() -> None:
    seen: set[str] = set()
    problems: list[str] = []
    for path in _documents():
        text = path.read_text(encoding="utf-8")
        commands = _install_commands(text)
        if path.name == "noxfile.py":  # session.install("-e", ".[dev]")
            commands += re.findall(r"session\.install\([^)]*?\"(\.\[[\w,-]+\])\"", text)
        for command in commands:
            for requirement in _requirements(command):
                name, _, extras = requirement.partition("[")
                for extra in filter(None, (part.strip() for part in extras.rstrip("]").split(","))):
                    seen.add(extra)
                    if extra not in EXTRAS:
                        problems.append(f"{path.relative_to(ROOT)}: {requirement!r} names no extra {extra!r}")
                # A name rather than a path or URL is a PyPI name; aiobatch's own is the distribution's.
                local = name.startswith((".", "/", "~")) or "/" in name or ":" in name
                if not local and re.fullmatch(r"aiobatch[\w.-]*", name, re.IGNORECASE) and name != DISTRIBUTION:
                    problems.append(f"{path.relative_to(ROOT)}: {requirement!r} is not {DISTRIBUTION!r}")
    assert not problems, "\n".join(problems)
    assert {"ffmpeg", "dev", "notebook"} <= seen  # the scan found the commands it is there to check


def test_every_extra_is_documented_once_in_the_quickstart_table() -> None:
    quickstart = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    table = quickstart.split("| extra | adds | for |\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([\w-]+)` \|", table, re.MULTILINE)
    assert sorted(rows) == sorted(EXTRAS)
    assert all(len(set(requirements)) == len(requirements) for requirements in EXTRAS.values()), EXTRAS


def test_the_extras_contain_what_they_say() -> None:
    def names(extra: str) -> set[str]:
        return {re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower() for requirement in EXTRAS[extra]}

    assert names("ffmpeg") == {"imageio-ffmpeg"}
    assert names("ffmpeg") < names("demo") < names("notebook") < names("dev")
    assert names("ffmpeg") < names("bench")
    assert {"pytest", "pytest-timeout", "hypothesis", "ruff", "mypy", "nbclient", "nbformat"} <= names("dev")
    assert names("docs") == {"mkdocs", "mkdocs-material", "mkdocstrings"}


# ----------------------------------------------------------------------------------------------------
# Supported versions
# ----------------------------------------------------------------------------------------------------


def _supported() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Supported versions\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|", section, re.MULTILINE)
    return {name: versions for name, versions in rows if not set(name) <= {"-"} and name != "component"}


def _pin(package: str) -> str:
    (requirement,) = [dep for dep in PROJECT["dependencies"] if re.match(rf"{re.escape(package)}(\[|[<>=])", dep)]
    return re.sub(r"^[\w-]+(\[[\w,]+\])?", "", requirement)


def test_the_supported_versions_are_what_the_package_enforces() -> None:
    supported = _supported()
    assert sorted(supported) == ["Azurite", "Node.js", "Python", "azure-batch", "azure-storage-blob"]
    python_minimum = PROJECT["requires-python"].removeprefix(">=")
    assert supported["Python"].startswith(f"{python_minimum} or later"), supported["Python"]
    for package in ("azure-batch", "azure-storage-blob"):
        pin = _pin(package)  # ">=15.1,<16"
        lower, upper = re.fullmatch(r">=([\d.]+),<([\d.]+)", pin).groups()  # type: ignore[union-attr]
        assert supported[package].startswith(f"{lower} or later, below {upper}"), (package, supported[package], pin)
    assert supported["Azurite"].startswith(f"{_azurite.AZURITE_VERSION} "), supported["Azurite"]
    assert supported["Node.js"].startswith(f"{_azurite._MIN_NODE[0]} or later"), supported["Node.js"]
