"""A fan-out's plan: which inputs there are, what each makes, which are done already, and each one's task spec.

Pure but for reading the input folder and looking for outputs already in place: no request is made here.
Output blobs are ``<job id>/<task id>/<node name>`` (`output_blob`): a blob an earlier run left can never pass
for this run's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._errors import ConfigurationError
from ._specs import AppPackageRef, OsFamily, TaskSpec, output_files_to, resource_file, task_ids_for
from ._template import OutputName, node_name, node_output_names, render_command, render_output_name

__all__ = [
    "MapPlan",
    "build_task_specs",
    "largest_first",
    "output_blob",
    "output_present",
    "plan_inputs",
]


def output_present(path: Path) -> bool:
    """Whether an output is already in place: a non-empty file (outputs are renamed into place when complete).

    Example:
        >>> output_present(Path("/nonexistent/out.txt"))
        False
    """
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def largest_first(names: Sequence[str], sizes: Mapping[str, int]) -> list[str]:
    """*names* by size, largest first (ties by name): the longest tasks start first.

    With more inputs than task slots, a big input started last would run alone at the end; started first, it
    overlaps the small ones, and the run ends sooner.

    Example:
        >>> largest_first(["a", "b", "c"], {"a": 1, "b": 3, "c": 3})
        ['b', 'c', 'a']
    """
    return sorted(names, key=lambda name: (-sizes.get(name, 0), name))


@dataclass(frozen=True)
class MapPlan:
    """The inputs of a fan-out and what each makes, split into those to run and those already done.

    Attributes:
        inputs: every input, in order (``name`` -> local path).
        outputs: input name -> its outputs' local paths, relative to the output folder.
        todo: names of the inputs to run, in order.
        present: names of the inputs whose outputs are all already there (skipped).
        sizes: input name -> bytes.
    """

    inputs: dict[str, Path]
    outputs: dict[str, tuple[str, ...]]
    todo: tuple[str, ...]
    present: tuple[str, ...]
    sizes: dict[str, int]


def _collect_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], glob: str | None
) -> list[tuple[Path, str]]:
    if isinstance(inputs, (str, os.PathLike)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise ConfigurationError(
                f"input folder {str(folder)!r} does not exist or is not a folder: pass a folder (with glob=) or a "
                "list of files.",
                setting="inputs",
            )
        found = sorted(p for p in folder.glob(glob or "*") if p.is_file())
        return [(p, p.relative_to(folder).as_posix()) for p in found]
    if glob is not None:
        raise ConfigurationError("glob= applies to a folder of inputs, not to a list of files.", setting="glob")
    return [(Path(p), Path(p).name) for p in inputs]


def plan_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    outputs: Sequence[OutputName],
    output_dir: str | os.PathLike[str],
    *,
    glob: str | None = None,
) -> MapPlan:
    """Find the inputs, name each one's outputs, and split them into those to run and those already done (blocking).

    Args:
        inputs: a folder (its files matching *glob*, ``*`` by default) or a list of files.
        outputs: output name templates, or functions of the input's name (see `render_output_name`).
        output_dir: where the outputs go.
        glob: the pattern under a folder (``**/*.txt`` reaches into subfolders).

    Returns:
        The plan.

    Raises:
        ConfigurationError: a missing input, two inputs with one name, or two outputs with one path (compared
            without case, as a case-insensitive file system would).

    Example:
        >>> plan = plan_inputs([], ["{stem}.txt"], "out")
        >>> plan.todo
        ()
    """
    out = Path(output_dir)
    if not outputs:
        raise ConfigurationError("name at least one output, e.g. outputs=['{stem}.txt'].", setting="outputs")
    found = _collect_inputs(inputs, glob)
    paths: dict[str, Path] = {}
    made: dict[str, tuple[str, ...]] = {}
    owner: dict[str, tuple[str, str]] = {}
    sizes: dict[str, int] = {}
    for path, name in found:
        if name in paths:
            raise ConfigurationError(
                f"two inputs are called {name!r} ({str(paths[name])!r} and {str(path)!r}); each input needs its own "
                "name.",
                setting="inputs",
            )
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigurationError(f"cannot read input {str(path)!r}: {exc}", setting="inputs") from exc
        if not path.is_file():
            raise ConfigurationError(f"input {str(path)!r} is not a file.", setting="inputs")
        paths[name], sizes[name] = path, stat.st_size
        rendered = tuple(render_output_name(t, name) for t in outputs)
        for rel in rendered:
            other = owner.get(rel.casefold())
            if other is not None:
                raise ConfigurationError(
                    f"inputs {other[0]!r} and {name!r} would both write {rel!r}"
                    if other[0] != name
                    else f"outputs {other[1]!r} and {rel!r} of input {name!r} are the same file"
                    f"; give each output its own name (e.g. with {{stem}}).",
                    setting="outputs",
                )
            owner[rel.casefold()] = (name, rel)
        made[name] = rendered
    todo: list[str] = []
    present: list[str] = []
    for name in paths:
        done = all(output_present(out.joinpath(*rel.split("/"))) for rel in made[name])
        (present if done else todo).append(name)
    return MapPlan(inputs=paths, outputs=made, todo=tuple(todo), present=tuple(present), sizes=sizes)


def build_task_specs(
    plan: MapPlan,
    command: str,
    *,
    os: OsFamily,
    job_id: str,
    input_urls: Mapping[str, str],
    output_url: str,
    environment: Mapping[str, str] | None = None,
    application_packages: Sequence[AppPackageRef] = (),
    retries: int = 0,
    timeout: float | None = None,
) -> list[TaskSpec]:
    """One task spec per input to run, the largest first (pure: no I/O).

    Each task downloads its input as ``input<suffix>`` and uploads each output ``output<i><suffix>`` to the blob
    ``<job id>/<task id>/<that name>`` (see `output_blob`).

    Args:
        plan: the plan (`plan_inputs`).
        command: the command template.
        os: the pool's OS, for quoting.
        job_id: the job, for the output blob names.
        input_urls: input name -> read SAS URL of its blob.
        output_url: the output container's write SAS URL.
        environment: environment variables for every task.
        application_packages: packages every task needs.
        retries: retries of a failed task.
        timeout: seconds a task may run per attempt.

    Returns:
        The specs, largest input first.

    Raises:
        ConfigurationError: a bad template, or a name no command line on *os* can carry.

    Example:
        >>> plan = MapPlan({"a b.txt": Path("a b.txt")}, {"a b.txt": ("a b.n",)}, ("a b.txt",), (), {})
        >>> spec, = build_task_specs(plan, "wc -w < {input} > {output}", os="windows", job_id="j",
        ...                          input_urls={"a b.txt": "https://x/in/a%20b.txt"}, output_url="https://x/out")
        >>> spec.command_line
        'cmd /c wc -w < input.txt > output.n'
    """
    ids = task_ids_for(plan.todo)
    specs: list[TaskSpec] = []
    for name in largest_first(plan.todo, plan.sizes):
        node_input = node_name("input", name)
        node_outputs = node_output_names(plan.outputs[name])
        specs.append(
            TaskSpec(
                id=ids[name],
                command_line=render_command(
                    command, os=os, input_file=node_input, output_files=node_outputs, name=name
                ),
                resource_files=[resource_file(input_urls[name], node_input)],
                output_files=[
                    output_files_to(output_url, node, path=output_blob(job_id, ids[name], node))
                    for node in node_outputs
                ],
                environment=dict(environment or {}),
                application_packages=tuple(application_packages),
                max_task_retry_count=retries,
                max_wall_clock_time=timeout,
                display_name=name[:1024],
            )
        )
    return specs


def output_blob(job_id: str, task_id: str, node_file: str) -> str:
    """The blob an output goes to: ``<job id>/<task id>/<its name on the node>``.

    Example:
        >>> output_blob("map-1", "a_txt-0123456789", "output.txt")
        'map-1/a_txt-0123456789/output.txt'
    """
    return f"{job_id}/{task_id}/{node_file}"
