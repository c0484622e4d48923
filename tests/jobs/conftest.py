"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.webhook import HttpSink
from tests.jobs.processes import Workers


@pytest.fixture
def workers(database_url: str, sink: HttpSink, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes a test starts (`workers.start()`), killed at its end."""
    workers = Workers(database_url, sink, tmp_path)
    yield workers
    workers.stop_all()
