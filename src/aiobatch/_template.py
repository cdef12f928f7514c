"""Command templates: the placeholders, their values quoted for the pool's OS, and the fixed names on the node.

On the node a task sees its input under a fixed, safe name (``input`` plus the input's suffix when that
suffix is plain, e.g. ``input.txt``) and writes its outputs under fixed names too (``output.txt``,
``output1.log``, ...). The real names -- spaces, quotes, ``$(...)``, ``;``, ``&``, ``#``, ``%``, any script --
stay in the blob names of the inputs and in the local output paths; in the command line they appear only
through ``{name}``, ``{stem}`` and ``{suffix}``, quoted for the pool's OS by `aiobatch.quote_arg`. So no name
reaches a shell unquoted, an ``outputFiles`` pattern (a glob) or a file system that refuses some characters.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePosixPath

from ._errors import ConfigurationError
from ._specs import OsFamily, command_line, quote_arg

__all__ = [
    "OUTPUT_PLACEHOLDERS",
    "PLACEHOLDERS",
    "OutputName",
    "node_name",
    "node_output_names",
    "parse_template",
    "render_command",
    "render_output_name",
]

#: The placeholders of a command template, and what each stands for (all quoted for the pool's OS).
PLACEHOLDERS: Mapping[str, str] = {
    "input": "the input file on the node (a fixed, safe name such as input.txt)",
    "output": "the first output file on the node (output.txt, say), to be written by the command",
    "outputs": "every output file on the node, separated by spaces; {outputs[N]} is output N (from 0)",
    "name": "the input's name: its file name, or its path under the folder (with '/')",
    "stem": "the input's name without its suffix",
    "suffix": "the input's suffix, e.g. '.txt' ('' when it has none)",
}
#: The placeholders an output name may hold (it names a local file, so nothing is quoted).
OUTPUT_PLACEHOLDERS = ("name", "stem", "suffix")

_PLAIN_SUFFIX = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")
_OUTPUTS_ITEM = re.compile(r"^outputs\[(\d+)\]$")

#: An output name: a template (``"{stem}.txt"``), or a function of the input's name.
OutputName = str | Callable[[str], str]


def parse_template(template: str, allowed: Iterable[str], what: str) -> list[tuple[str, str | None]]:
    """Split a template into (literal text, field name or None); refuse unknown fields and format specs."""
    allowed = set(allowed)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(
            f"{what} {template!r} is not a valid template ({exc}); write a literal brace as {{{{ or }}}}."
        ) from exc
    out: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            known = name in allowed or ("outputs" in allowed and _OUTPUTS_ITEM.match(name))
            if not known or spec or conversion:
                listed = ", ".join("{" + n + "}" for n in sorted(allowed))
                raise ConfigurationError(
                    f"{what} {template!r} has the placeholder {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}; use only {listed} (no format specs), and {{{{ or }}}} for a "
                    "literal brace."
                )
        out.append((literal, name))
    return out


def _name_parts(name: str) -> dict[str, str]:
    suffix = PurePosixPath(name).suffix
    return {"name": name, "stem": name[: len(name) - len(suffix)] if suffix else name, "suffix": suffix}


def render_output_name(template: OutputName, name: str) -> str:
    """An output's local path (relative, ``/``-separated) for input *name*: ``{stem}.txt`` -> ``a b.txt``.

    Raises:
        ConfigurationError: an unknown placeholder, or a path that is absolute, empty or climbs out with ``..``.

    Example:
        >>> render_output_name("logs/{stem}.log", "my cat.txt")
        'logs/my cat.log'
    """
    if callable(template):
        rendered = template(name)
    else:
        values = _name_parts(name)
        parsed = parse_template(template, OUTPUT_PLACEHOLDERS, "output")
        rendered = "".join(lit + (values[f] if f else "") for lit, f in parsed)
    parts = rendered.split("/")
    if not rendered or rendered.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rendered:
        raise ConfigurationError(
            f"output {template!r} gives {rendered!r} for input {name!r}: an output must be a relative path in the "
            "output folder, without empty, '.' or '..' parts."
        )
    return rendered


def node_name(base: str, local: str) -> str:
    """A fixed, safe file name on the node: *base* plus *local*'s suffix when it is plain (``input.txt``).

    Example:
        >>> node_name("input", "it's 100%.TXT"), node_name("output1", "a.b c")
        ('input.txt', 'output1')
    """
    # Lower case: a tool that goes by the extension knows ".mp4" if any; the real name keeps its case.
    suffix = PurePosixPath(local).suffix.lower()
    return base + (suffix if _PLAIN_SUFFIX.match(suffix) else "")


def node_output_names(outputs: Sequence[str]) -> list[str]:
    """The fixed, safe names on the node of an input's outputs: ``output<suffix>``, ``output1<suffix>``, ...

    Example:
        >>> node_output_names(["a b.txt", "logs/a.log"])
        ['output.txt', 'output1.log']
    """
    return [node_name("output" if i == 0 else f"output{i}", rel) for i, rel in enumerate(outputs)]


def render_command(template: str, *, os: OsFamily, input_file: str, output_files: Sequence[str], name: str) -> str:
    """The task's command line: *template* with its placeholders quoted for *os*, run by the OS's shell.

    Linux runs it as ``/bin/bash -c '<script>'``, Windows as ``cmd /c <script>``; see `PLACEHOLDERS`.

    Raises:
        ConfigurationError: an unknown placeholder, ``{outputs[N]}`` past the last output, or a value no command
            line can carry (a line break on Windows).

    Example:
        >>> render_command("wc -w {input} > {output}", os="linux", input_file="input.txt",
        ...                output_files=["output.txt"], name="my cat.txt")
        "/bin/bash -c 'wc -w input.txt > output.txt'"
    """
    values = {**_name_parts(name), "input": input_file, "output": output_files[0] if output_files else ""}
    parts: list[str] = []
    for literal, placeholder in parse_template(template, PLACEHOLDERS, "command"):
        parts.append(literal)
        if placeholder is None:
            continue
        item = _OUTPUTS_ITEM.match(placeholder)
        if placeholder == "outputs":
            parts.append(" ".join(quote_arg(o, os=os) for o in output_files))
        elif item is not None:
            index = int(item.group(1))
            if index >= len(output_files):
                raise ConfigurationError(
                    f"command {template!r} uses {{{placeholder}}}, but there are {len(output_files)} outputs "
                    f"(numbered from 0)."
                )
            parts.append(quote_arg(output_files[index], os=os))
        else:
            if placeholder == "output" and not output_files:
                raise ConfigurationError(f"command {template!r} uses {{output}}, but no output is named.")
            parts.append(quote_arg(values[placeholder], os=os))
    script = "".join(parts)
    if not script.strip():
        raise ConfigurationError("the command template is empty.")
    if os == "windows":
        return "cmd /c " + script
    return command_line(["/bin/bash", "-c", script], os="linux", shell=False)
