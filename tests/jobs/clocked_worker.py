"""`python -m tests.jobs.clocked_worker SECONDS`: the worker process of jobs/worker.py, with
its clock moved SECONDS ahead (WorkerResources.clock_offset). For tests only: a real
process that a test can kill while deliveries wait for quiet hours set years away."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from app.core.logs import configure_logging
from app.core.settings import get_settings
from jobs.worker import run_until_signalled


def main() -> None:
    offset = timedelta(seconds=float(sys.argv[1]))
    settings = get_settings()
    configure_logging(settings.log_level)
    sys.exit(asyncio.run(run_until_signalled(settings, clock_offset=offset)))


if __name__ == "__main__":
    main()
