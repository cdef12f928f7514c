"""A Griffe extension for the API reference: read Google ``Example:`` sections as ``Examples:``.

aiobatch's docstrings title their doctests ``Example:`` (one short example, per STYLE.md). Griffe's Google
parser knows only ``Examples:`` as a section of code; any other title becomes an admonition of Markdown, where
``>>>`` lines render as quoted text. This renames the title before parsing, so the examples render as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each loaded object (module, class, function, attribute)."""
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
