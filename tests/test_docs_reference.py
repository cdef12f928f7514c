"""The API reference names every public name of ``aiobatch``, each once, in the page's reading order."""

from __future__ import annotations

import re
from pathlib import Path

import aiobatch

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "client.md"


def test_every_public_name_is_in_the_reference_once() -> None:
    rendered = re.findall(r"^::: aiobatch\.(\w+)$", PAGE.read_text(), re.MULTILINE)
    public = set(aiobatch.__all__) - {"__version__"}
    assert sorted(set(public) - set(rendered)) == [], "public names missing from docs/reference/client.md"
    assert sorted(set(rendered) - public) == [], "names in docs/reference/client.md that are not public"
    assert len(rendered) == len(set(rendered)), "a name rendered twice"


def test_the_reference_reads_client_specs_results_errors() -> None:
    headings = re.findall(r"^## (.+)$", PAGE.read_text(), re.MULTILINE)
    assert headings == ["The client", "Specs", "Events and results", "Errors"]
    rendered = re.findall(r"^::: aiobatch\.(\w+)$", PAGE.read_text(), re.MULTILINE)
    assert rendered[0] == "Client"
    assert rendered.index("FileResult") < rendered.index("MapReport") < rendered.index("AiobatchError")
