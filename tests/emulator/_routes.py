"""The emulator's route table, read from the router of an application built for the purpose (never started).

Tests that must cover every operation derive their list from here, so a route added to `build_app` is covered
without anyone remembering to list it.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from aiobatch.emulator import Quotas, Timings
from aiobatch.emulator._app import build_app
from aiobatch.emulator._faults import Faults
from aiobatch.emulator._model import Account
from aiobatch.emulator._scheduler import Scheduler


def app_routes() -> list[tuple[str, str]]:
    """Every (method, path template) the emulator serves, e.g. ``("POST", "/jobs/{job}/tasks")``."""
    faults = Faults(None)
    account = Account(name="routes", url="")
    with tempfile.TemporaryDirectory() as workdir:
        scheduler = Scheduler(account, workdir=Path(workdir), timings=Timings(), quotas=Quotas(), faults=faults)
        app = build_app(account, scheduler, base64.b64encode(b"k" * 32).decode(), faults)
        return sorted(
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None and route.method != "*"
        )
