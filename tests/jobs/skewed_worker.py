"""`python -m tests.jobs.skewed_worker SECONDS`: the worker process of jobs/worker.py on a
machine whose clock is SECONDS off (negative: behind), as a host without NTP would be:
time.time() and datetime.now() of the whole process are moved before anything is imported;
the database's clock is not. For tests only: unlike clocked_worker.py, which moves the
database's idea of now for delivery decisions, this moves the worker's own clock."""

from __future__ import annotations

import datetime as _datetime
import sys
import time
from typing import Any

# Imported first: their C code keeps datetimes made at import (asyncpg decodes timestamps
# from an epoch it made then), and msgspec encodes no subclass of datetime.
import asyncpg  # noqa: F401
import msgspec  # noqa: F401

SKEW = _datetime.timedelta(seconds=float(sys.argv[1]))
_real_datetime = _datetime.datetime
_real_time, _real_time_ns = time.time, time.time_ns


class _Datetime(type):
    # Values made by C code (asyncpg's decoders) are real datetimes: still datetimes.
    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, _real_datetime)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, _real_datetime)


class _SkewedDatetime(_real_datetime, metaclass=_Datetime):
    __slots__ = ()  # the size C extensions expect of datetime.datetime

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return _real_datetime.now(tz) + SKEW

    @classmethod
    def utcnow(cls) -> Any:
        return _real_datetime.now(_datetime.UTC).replace(tzinfo=None) + SKEW

    @classmethod
    def today(cls) -> Any:
        return cls.now()


time.time = lambda: _real_time() + SKEW.total_seconds()
time.time_ns = lambda: _real_time_ns() + int(SKEW.total_seconds() * 1e9)
_datetime.datetime = _SkewedDatetime  # type: ignore[misc]


def main() -> None:
    import asyncio

    from app.core.logs import configure_logging
    from app.core.settings import get_settings
    from jobs.worker import run_until_signalled

    settings = get_settings()
    configure_logging(settings.log_level)
    sys.exit(asyncio.run(run_until_signalled(settings)))


if __name__ == "__main__":
    main()
