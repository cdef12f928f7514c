"""The example notebook, executed cell by cell in a real Jupyter kernel (nbclient + ipykernel)."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT

NOTEBOOK = ROOT / "examples" / "pets.ipynb"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jupyter_client / zmq internals
def test_the_notebook_runs_and_shows_gifs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's work folder goes under the test's
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    [parameters] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = "width = 64\nfps = 5\npackaged_clips = False\nseconds = 1.0\ngifs_to_show = 2\n"

    NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
    ).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    gifs = [base64.b64decode(o["data"]["image/gif"]) for o in outputs if "image/gif" in o.get("data", {})]
    assert len(gifs) == 2 and all(g[:6] == b"GIF89a" for g in gifs)
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "3 converted, 0 failed" in html  # the summary table under the progress display
    text = "".join(o.get("text", "") for o in outputs)
    assert "succeeded" in text and "left behind: nothing" in text
