"""The demo (`nox -s demo` runs examples/run_demo.py): GIFs made, exit 0, and nothing left behind anywhere."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from aiobatch.demo.ffmpeg import ffmpeg_version
from aiobatch.demo.run import default_cache_dir

from .conftest import ROOT, make_clips


def load_run_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "examples" / "run_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_converts_and_leaves_nothing_beside_the_output(
    ffmpeg_apps_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = tmp_path / "home" / "Videos" / "pets"
    make_clips(videos, ["cat.mp4", "dog with spaces.mp4"])
    output = tmp_path / "home" / "Videos" / "gifs"
    cache = tmp_path / "cache"
    # The session's package, linked in, so the demo does not zip ~80 MB again (it reuses what is cached).
    package = Path("ffmpeg") / f"{ffmpeg_version()}.zip"
    (cache / "apps" / "ffmpeg").mkdir(parents=True)
    os.link(ffmpeg_apps_dir / package, cache / "apps" / package)

    code = load_run_demo().main(
        ["--input", str(videos), "--output", str(output), "--cache-dir", str(cache), "--width", "64"]
    )

    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "demo OK" in out.out and "2 GIFs decoded" in out.out
    assert sorted(p.name for p in output.iterdir()) == ["cat.gif", "dog with spaces.gif"]
    # Nothing beside the output folder (the package cache used to land in ~/Videos/apps).
    assert sorted(p.name for p in output.parent.iterdir()) == ["gifs", "pets"]
    assert sorted(p.name for p in videos.iterdir()) == ["cat.mp4", "dog with spaces.mp4"]
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == [
        (Path("apps") / package).as_posix()
    ]
    # No pool, job, container or process left: run_demo checks and reports them as problems.
    assert "left behind" not in out.err and "left running" not in out.err, out.err


def test_the_default_cache_is_a_per_user_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_dir({"AIOBATCH_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c"
    if sys.platform.startswith("linux"):
        assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path / "xdg")}) == tmp_path / "xdg" / "aiobatch"
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert default_cache_dir({}) == tmp_path / "home" / ".cache" / "aiobatch"
