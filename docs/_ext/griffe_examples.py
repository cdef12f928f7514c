"""A Griffe extension for the API reference: docstrings written for other tools, read as this site renders them.

- ``Example:`` section titles become ``Examples:``. aiobatch's docstrings title their doctests ``Example:`` (one
  short example, per STYLE.md). Griffe's Google parser knows only ``Examples:`` as a section of code; any other
  title becomes an admonition of Markdown, where ``>>>`` lines render as quoted text.
- Sphinx roles (``:class:`~pkg.mod.Name```, ``:func:`name```) become code (```Name```): Markdown has no roles, so
  the site would show a literal ``:class:`` before the name.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|obj|exc|data|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    if match.group(1):  # `~a.b.C` shows as `C`, as Sphinx shows it
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` and turn Sphinx roles into code, in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of each loaded object (module, class, function, attribute)."""
        if obj.docstring is not None:
            value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role, value)
