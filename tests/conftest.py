"""Shared fixtures (helpers that are not fixtures live in ``tests/flower_messages.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.anvil import ANVIL, Anvil
from tests.flower_messages import serverapp_identity

# Every Flower process the tests start: no telemetry, no update checks, no downloads.
for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture
def tmp_run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[Anvil]:
    """A running anvil node on a free loopback port, stopped after the test."""
    assert ANVIL.exists(), f"anvil is missing at {ANVIL}: run `make install`"
    node = Anvil(tmp_path)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def as_serverapp() -> Iterator[None]:
    """Run the test as the ServerApp process would (Flower checks who builds messages)."""
    with serverapp_identity():
        yield
