"""Fixtures of the migration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import PREFIX, _janitor, url_of


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with nothing in it, for migrations to start from; yields its URL."""
    name = f"{PREFIX}_empty"  # per test process, like every test database
    with _janitor(name):
        yield url_of(name)
