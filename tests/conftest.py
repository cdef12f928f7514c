"""Shared test configuration; the fixtures themselves live in the aiobatch.testing plugin."""

from __future__ import annotations

import os

import pytest

from aiobatch.local import find_azurite_dir


@pytest.fixture(autouse=True)
def _no_azure_credentials(clean_azure_env: None) -> None:
    """Every test in this project runs without real Azure credentials in its environment."""


@pytest.fixture(autouse=True)
def _one_azurite_copy(monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config) -> None:
    """Subprocesses (``aiobatch local``, the tutorial's script) use the Azurite copy this session uses.

    They start in a test's own folder, outside the checkout, where the nearest-``.azurite`` search finds nothing
    and would install Azurite again for every test (minutes each in a fresh CI clone).
    """
    if not os.environ.get("AIOBATCH_AZURITE_DIR", "").strip():
        directory = find_azurite_dir(pytestconfig.rootpath)
        assert directory is not None
        monkeypatch.setenv("AIOBATCH_AZURITE_DIR", str(directory))
