"""The task JSON submit_tasks builds directly is exactly the JSON of the SDK's model of the same spec."""

from __future__ import annotations

import dataclasses
import json

import pytest

from aiobatch import AppPackageRef, TaskSpec, output_files_to, resource_file
from aiobatch._specs import ResourceFileSpec, to_task_model
from aiobatch._submit import _task_body, _task_json

SAS = "https://acct.blob.core.windows.net/inputs/my%20cat.mp4?se=2030-01-01&sp=r&sig=abc%3D"

FULL = TaskSpec(
    id="full",
    command_line="/bin/sh -c 'echo hi'",
    resource_files=[
        resource_file(SAS, "in/cat.mp4", file_mode="0755"),
        ResourceFileSpec(file_path="all", storage_container_url="https://acct/c?sig=x", blob_prefix="p/"),
    ],
    output_files=[
        output_files_to("https://acct/out?sig=y", "*.gif", path="gifs", upload_condition="taskcompletion"),
        output_files_to("https://acct/out?sig=y", "../std*.txt"),
    ],
    environment={"A": "1", "B": "two words"},
    application_packages=[AppPackageRef("ffmpeg", "7.1"), AppPackageRef("tools")],
    max_wall_clock_time=600.5,
    max_task_retry_count=-1,
    retention_time=3600.0,
    required_slots=2,
    display_name="Convert cat",
    elevated=True,
)

SPECS = [
    FULL,
    TaskSpec(id="bare", command_line="true"),
    TaskSpec(id="only-retries", command_line="true", max_task_retry_count=3),
    TaskSpec(id="only-wall-clock", command_line="true", max_wall_clock_time=86400 * 3 + 0.25),
    TaskSpec(id="zero-retention", command_line="true", retention_time=0.0),
    TaskSpec(id="not-elevated", command_line="true", elevated=False, environment={"X": ""}),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_the_body_is_the_models_json(spec: TaskSpec) -> None:
    assert _task_body(spec) == to_task_model(spec).as_dict()


def test_the_full_spec_sets_every_field() -> None:
    """A field added to TaskSpec must be set here too, so that the comparison above covers it."""
    for f in dataclasses.fields(TaskSpec):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert getattr(FULL, f.name) != default, f"set {f.name} in FULL"


PLAIN = [
    TaskSpec(id="plain", command_line="true"),
    TaskSpec(id="one-file", command_line="cat in", resource_files=[resource_file(SAS, "in/cat.mp4")]),
    TaskSpec(
        id="files-and-env",
        command_line="/bin/sh -c 'echo \"é\" \\\\ \u732b'",
        resource_files=[
            resource_file(SAS, "a b.mp4", file_mode="0644"),
            ResourceFileSpec(file_path="all", storage_container_url="https://acct/c?sig=x", blob_prefix="p/"),
            ResourceFileSpec(file_path="some", storage_container_url="https://acct/c?sig=x"),
        ],
        environment={"A": "1", "QUOTE": '"', "NL": "line\nbreak", "U": "\u00fc\U0001f431"},
    ),
    TaskSpec(id="own-run-id", command_line="true", environment={"AIOBATCH_RUN_ID": "r1"}),
]


@pytest.mark.parametrize("spec", SPECS + PLAIN, ids=lambda s: s.id)
@pytest.mark.parametrize("run_id", ["", "r1"])
def test_the_text_is_the_bodys_json_compact_and_ascii(spec: TaskSpec, run_id: str) -> None:
    text = _task_json(spec, run_id)
    assert json.loads(text) == _task_body(spec, run_id)
    assert text.isascii() and text == json.dumps(json.loads(text), separators=(",", ":"))
    env = {e["name"]: e["value"] for e in json.loads(text).get("environmentSettings", [])}
    assert env.get("AIOBATCH_RUN_ID") == (spec.environment.get("AIOBATCH_RUN_ID") or run_id or None)


def test_a_spec_compares_and_replaces_as_a_dataclass() -> None:
    spec = PLAIN[2]
    again = TaskSpec(
        id=spec.id,
        command_line=spec.command_line,
        resource_files=list(spec.resource_files),
        environment=dict(spec.environment),
    )
    assert again == spec and isinstance(again.resource_files, tuple)
    changed = dataclasses.replace(spec, id="other")
    assert changed.id == "other" and changed.resource_files == spec.resource_files
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.id = "x"  # type: ignore[misc]
    assert TaskSpec(id="e", command_line="true").environment == {}
