"""Find markup that leaked into the built site's prose: ``python docs/_ext/check_markup.py build/site``.

Markdown or reStructuredText that a renderer did not understand shows up as literal characters in the page: ``**``
of bold, backticks, ``:class:`` roles, ``[text][ref]`` cross-references that did not resolve. This reads every
page's text outside code (``<code>``, ``<pre>``) and reports each such leftover with its page; the exit status is
1 when there is any.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

LEFTOVERS = [
    ("bold or emphasis markers", re.compile(r"\*\*|(?<![\w*])\*[A-Za-z][^*\n]*\*(?![\w*])")),
    ("a backtick", re.compile(r"`")),
    ("a reStructuredText role", re.compile(r":(?:class|func|meth|attr|mod|obj|exc|data|ref|py:\w+):")),
    ("an unresolved cross-reference", re.compile(r"\[[^\[\]\n]+\]\[[^\[\]\n]*\]")),
]
_SKIP = {"code", "pre", "script", "style", "kbd", "samp"}


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.chunks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if not self.depth:
            self.chunks.append(data)


def leftovers(site: Path) -> list[str]:
    """One line per leftover: page, what it is, and the text around it."""
    found = []
    for page in sorted(site.rglob("*.html")):
        if page.name == "404.html":
            continue
        parser = _Text()
        parser.feed(page.read_text(encoding="utf-8"))
        text = " ".join(" ".join(parser.chunks).split())
        for what, pattern in LEFTOVERS:
            for match in pattern.finditer(text):
                around = text[max(0, match.start() - 50) : match.end() + 50]
                found.append(f"{page.relative_to(site)}: {what}: ...{around}...")
    return found


def main(argv: list[str]) -> int:
    """Check the site in ``argv[0]`` (``build/site`` by default)."""
    site = Path(argv[0] if argv else "build/site")
    found = leftovers(site)
    for line in found:
        print(line)
    print(f"{len(found)} markup leftover(s) in {site}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
