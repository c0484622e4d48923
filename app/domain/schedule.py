"""When messages may go: the bounds of a publish's `send_at`, IANA zone names, and the
quiet hours of a campaign in a recipient's local time.

Local times come from the time-zone database (`zoneinfo`, with the `tzdata` package where
the system has none), never from fixed offsets: a window of 21:00 to 08:00 in New York
ends at 13:00 UTC in winter and 12:00 UTC in summer, and on the night the clocks change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import cache
from importlib import resources
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.domain.errors import InvalidInput

SEND_AT_PAST = timedelta(minutes=5)
"""How far in the past a send_at may be (clocks differ; a request takes time)."""
SEND_AT_AHEAD = timedelta(days=90)
MAX_REPORTED_PATHS = 100
"""An error names at most this many offending paths."""


NOT_GEOGRAPHIC = frozenset({"Factory", "localtime", "posixrules"})
"""Names that a zoneinfo directory may hold but that place no recipient anywhere:
`localtime` and `posixrules` are the host's own settings (the zone would depend on the
machine the worker runs on), `Factory` is tzdata's placeholder for "not set"."""


@cache
def known_zones() -> frozenset[str]:
    """The names a `time_zone` may take: those of the IANA time-zone database as the
    `tzdata` package lists them (canonical zones, their backward-compatible aliases such
    as US/Eastern, the fixed Etc/ zones), the same on every host; read once."""
    listed = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    return frozenset(listed.split()) - NOT_GEOGRAPHIC


class HasTimeZone(Protocol):
    @property
    def time_zone(self) -> str | None: ...


def check_send_at(send_at: datetime, now: datetime) -> None:
    """InvalidInput naming `$.send_at` unless it lies within the bounds around `now`."""
    if send_at < now - SEND_AT_PAST:
        problem = "is more than 5 minutes in the past"
    elif send_at > now + SEND_AT_AHEAD:
        problem = "is more than 90 days ahead"
    else:
        return
    raise InvalidInput(f"send_at {problem}", {"$.send_at": f"{problem} (now: {now.isoformat()})"})


def check_zone(name: str, path: str) -> None:
    if name not in known_zones():
        raise InvalidInput(f"unknown time zone {name!r}", {path: _unknown(name)})


def check_recipient_zones(recipients: Sequence[HasTimeZone]) -> None:
    """InvalidInput naming the first MAX_REPORTED_PATHS recipients whose `time_zone` is no
    IANA name. One set operation in the common case: a publish of 100,000 recipients
    carries a handful of distinct zones."""
    unknown = {r.time_zone for r in recipients} - known_zones() - {None}
    if not unknown:
        return
    paths: dict[str, str] = {}
    count = 0
    for position, r in enumerate(recipients):
        if r.time_zone in unknown:
            count += 1
            if len(paths) < MAX_REPORTED_PATHS:
                paths[f"$.recipients[{position}].time_zone"] = _unknown(r.time_zone)
    shown = "" if count <= MAX_REPORTED_PATHS else f" (the first {MAX_REPORTED_PATHS} shown)"
    raise InvalidInput(f"{count} recipients have an unknown time zone{shown}", paths)


def _unknown(name: str | None) -> str:
    return f"unknown time zone {name!r}; expected an IANA name such as America/New_York"


@dataclass(frozen=True)
class QuietWindow:
    """A campaign's quiet hours: local times in [start, end) are quiet; when start > end
    the window crosses midnight. start == end is refused at the API."""

    start: time
    end: time
    time_zone: str

    @classmethod
    def of(cls, stored: dict[str, str] | None) -> QuietWindow | None:
        """From the campaign's `quiet_hours` column (validated when it was written)."""
        if stored is None:
            return None
        return cls(
            time.fromisoformat(stored["start"]),
            time.fromisoformat(stored["end"]),
            stored["time_zone"],
        )

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def quiet_until(self, now: datetime, zone_name: str | None) -> datetime | None:
        """None if a message may go to a recipient of zone `zone_name` (else the
        window's) at `now`; otherwise the instant (UTC) its local time leaves the window.

        The end is the window's end on the local calendar, read by zoneinfo: an end
        that does not exist that night (inside a spring-forward gap) lies as much later
        as the gap is long, like 02:30 read as 03:30; an end that occurs twice (fall
        back) is the first of the two still ahead of `now`."""
        zone = _zone(zone_name or self.time_zone, self.time_zone)
        local = now.astimezone(zone)
        wall = local.time().replace(tzinfo=None)
        if not self.contains(wall):
            return None
        day = local.date()
        if self.start > self.end and wall >= self.start:
            day += timedelta(days=1)  # in the evening part: it ends tomorrow morning
        end = datetime.combine(day, self.end, zone)
        for candidate in (end, end.replace(fold=1)):  # fold=1: the second of a repeated hour
            if candidate > now:
                return candidate.astimezone(UTC)
        # Never now or earlier: the delivery would be claimed again at once.
        return now + timedelta(minutes=1)


@cache
def _zone(name: str, fallback: str) -> ZoneInfo:
    """The zone of `name`. A name that the database no longer knows (checked at publish,
    a tzdata update since), or one accepted before only known names were (`localtime`),
    falls back to the campaign's, then UTC, rather than stopping delivery."""
    for candidate in (name, fallback):
        if candidate not in known_zones():
            continue
        try:
            return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")


def first_instant(instants: Iterable[datetime | None]) -> datetime | None:
    return min((i for i in instants if i is not None), default=None)
