"""Fixtures of the migration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import PREFIX, Drops, _janitor, _numbers, url_of


@pytest.fixture
def empty_database(drops: Drops) -> Iterator[str]:
    """A database with nothing in it, for migrations to start from; yields its URL. Dropped
    behind the test (`Drops`): a migrated database's drop took up to 69 s at load 10."""
    name = f"{PREFIX}_empty_{next(_numbers)}"
    _janitor(name).init()
    try:
        yield url_of(name)
    finally:
        drops.drop(name)
