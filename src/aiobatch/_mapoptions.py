"""The options of a fan-out (`MapOptions`), and the containers it uses unless told otherwise."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from ._observer import MapObserver
from ._specs import AppPackageRef

if sys.version_info >= (3, 11):
    from typing import TypedDict
else:  # a dependency below Python 3.11 (pyproject.toml)
    from typing_extensions import TypedDict

__all__ = ["DEFAULT_INPUT_CONTAINER", "DEFAULT_OUTPUT_CONTAINER", "MapOptions"]

DEFAULT_INPUT_CONTAINER = "aiobatch-inputs"
DEFAULT_OUTPUT_CONTAINER = "aiobatch-outputs"


class MapOptions(TypedDict, total=False):
    """The options of a fan-out (`Client.map_files`, `FileMap`): keyword arguments, each optional.

    Attributes:
        glob: the pattern under an input folder (``*`` by default; ``**/*.txt`` reaches into subfolders).
        job_id: the job id; ``map-<run id>`` by default (``-2``, ``-3`` ... for later calls on one client).
        input_container: the container the inputs go to (``aiobatch-inputs`` by default).
        output_container: the container the tasks write to (``aiobatch-outputs`` by default).
        reuse_pool: run on an existing pool with the spec's id that this run did not create (``False``).
        min_nodes: usable nodes to wait for before adding tasks (1).
        pool_timeout: seconds to wait for them (1800).
        application_packages: packages every task needs, beyond the pool's (none).
        environment: environment variables for every task (none).
        retries: retries of a failed task (0; ``-1``: unlimited).
        timeout: seconds one task may run per attempt (no limit).
        upload_concurrency: most uploads at once (8).
        download_concurrency: most inputs whose outputs download at once (8).
        poll_interval: seconds between polls while tasks complete (1.0).
        observer: receives progress -- stages, bytes, pool nodes, task events, results (none).

    Example:
        >>> options: MapOptions = {"retries": 2, "timeout": 600.0, "environment": {"LANG": "C.UTF-8"}}
        >>> sorted(options)
        ['environment', 'retries', 'timeout']
    """

    glob: str | None
    job_id: str | None
    input_container: str
    output_container: str
    reuse_pool: bool
    min_nodes: int
    pool_timeout: float
    application_packages: Sequence[AppPackageRef]
    environment: Mapping[str, str] | None
    retries: int
    timeout: float | None
    upload_concurrency: int
    download_concurrency: int
    poll_interval: float
    observer: MapObserver | None
