"""Quiet hours in a recipient's local time, read from the time-zone database."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from app.domain.errors import InvalidInput
from app.domain.schedule import QuietWindow, check_recipient_zones, known_zones
from app.domain.schemas import Recipient

NIGHT = QuietWindow(time(21, 0), time(8, 0), "America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "until"),
    [
        # Winter (EST, UTC-5): 20:59 may go; 21:00 to 07:59 wait for 08:00 = 13:00 UTC.
        (utc(2027, 1, 15, 1, 59), None),
        (utc(2027, 1, 15, 2, 0), utc(2027, 1, 15, 13, 0)),  # 21:00, the evening before
        (utc(2027, 1, 15, 4, 59), utc(2027, 1, 15, 13, 0)),  # 23:59
        (utc(2027, 1, 15, 5, 0), utc(2027, 1, 15, 13, 0)),  # 00:00: same end
        (utc(2027, 1, 15, 12, 59), utc(2027, 1, 15, 13, 0)),  # 07:59
        (utc(2027, 1, 15, 13, 0), None),  # 08:00: the end is not quiet
        # Summer (EDT, UTC-4): the same window ends at 12:00 UTC.
        (utc(2027, 7, 15, 3, 0), utc(2027, 7, 15, 12, 0)),
        # Spring forward (2027-03-14, 02:00 EST -> 03:00 EDT): 23:00 EST ends at 08:00 EDT.
        (utc(2027, 3, 14, 4, 0), utc(2027, 3, 14, 12, 0)),
        (utc(2027, 3, 14, 11, 59), utc(2027, 3, 14, 12, 0)),
        # Fall back (2027-11-07, 02:00 EDT -> 01:00 EST): 23:00 EDT ends at 08:00 EST.
        (utc(2027, 11, 7, 3, 0), utc(2027, 11, 7, 13, 0)),
    ],
)
def test_a_window_across_midnight_follows_the_zones_rules(now, until):
    assert NIGHT.quiet_until(now, None) == until


def test_a_recipients_zone_overrides_the_campaigns():
    now = utc(2027, 1, 15, 3, 0)  # 22:00 in New York, 12:00 in Tokyo, 19:00 in Los Angeles

    assert NIGHT.quiet_until(now, None) == utc(2027, 1, 15, 13, 0)
    assert NIGHT.quiet_until(now, "Asia/Tokyo") is None
    assert NIGHT.quiet_until(now, "America/Los_Angeles") is None
    assert NIGHT.quiet_until(utc(2027, 1, 15, 6, 0), "America/Los_Angeles") == utc(
        2027, 1, 15, 16, 0
    )


def test_a_window_within_a_day():
    lunch = QuietWindow(time(12, 0), time(13, 30), "Europe/Berlin")

    assert lunch.quiet_until(utc(2027, 1, 15, 10, 59), None) is None  # 11:59 CET
    assert lunch.quiet_until(utc(2027, 1, 15, 11, 0), None) == utc(2027, 1, 15, 12, 30)
    assert lunch.quiet_until(utc(2027, 1, 15, 12, 30), None) is None


def test_an_end_inside_the_spring_forward_gap_is_read_as_java_and_zoneinfo_do():
    # 02:30 does not exist on 2027-03-14 in New York: it is read as 03:30 EDT.
    gap = QuietWindow(time(1, 0), time(2, 30), "America/New_York")

    assert gap.quiet_until(utc(2027, 3, 14, 6, 15), None) == utc(2027, 3, 14, 7, 30)
    assert gap.quiet_until(utc(2027, 3, 14, 7, 30), None) is None


def test_an_end_that_occurs_twice_is_the_first_one_still_ahead():
    # 01:00 to 01:30 on 2027-11-07 in New York happens twice (EDT, then EST).
    twice = QuietWindow(time(1, 0), time(1, 30), "America/New_York")

    assert twice.quiet_until(utc(2027, 11, 7, 5, 15), None) == utc(2027, 11, 7, 5, 30)  # EDT
    assert twice.quiet_until(utc(2027, 11, 7, 6, 15), None) == utc(2027, 11, 7, 6, 30)  # EST


def test_the_zone_database_is_there():
    assert {"America/New_York", "Europe/Berlin", "Asia/Kolkata", "UTC"} <= known_zones()


def test_unknown_recipient_zones_are_named_by_path_the_first_100():
    recipients = [
        Recipient(f"p{i}", f"u{i}@example.com", "Mars/Olympus" if i % 2 else "Europe/Paris")
        for i in range(300)
    ]

    with pytest.raises(InvalidInput) as error:
        check_recipient_zones(recipients)

    details = error.value.details
    assert len(details) == 100
    assert list(details)[:2] == ["$.recipients[1].time_zone", "$.recipients[3].time_zone"]
    assert "Mars/Olympus" in details["$.recipients[1].time_zone"]
    assert "150 recipients" in error.value.message
