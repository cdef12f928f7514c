"""Shared test configuration; the fixtures themselves live in the aiobatch.testing plugin."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_azure_credentials(clean_azure_env: None) -> None:
    """Every test in this project runs without real Azure credentials in its environment."""
