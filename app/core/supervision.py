"""Long-lived background tasks that cannot die quietly.

`every` runs one round of a periodic job after another for ever: a round that raises is
logged (with its traceback when the error was not expected) and the next round runs.
`start` watches a background task: if it ever ends other than by cancellation, that is
logged as critical and `on_death` runs, which in the worker stops the process with a
non-zero status, so that the platform restarts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

logger = logging.getLogger(__name__)


async def every(
    seconds: float,
    round_: Callable[[], Awaitable[object]],
    *,
    name: str,
    expected: tuple[type[BaseException], ...] = (),
) -> NoReturn:
    """Run `round_` every `seconds`, whatever a round raises. `expected` errors (the
    database being away) are logged in one line; any other with its traceback."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await round_()
        except expected as exc:
            logger.warning("%s: round failed, trying again in %.1f s: %r", name, seconds, exc)
        except Exception:
            logger.exception("%s: round failed unexpectedly, trying again in %.1f s", name, seconds)


def start(
    coroutine: Coroutine[Any, Any, object], *, name: str, on_death: Callable[[], object]
) -> asyncio.Task[object]:
    """The coroutine as a task whose end, other than by cancellation, calls `on_death`."""
    task = asyncio.create_task(coroutine, name=name)

    def check(task: asyncio.Task[object]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        logger.critical(
            "background task %s ended: %r", task.get_name(), error or "returned", exc_info=error
        )
        on_death()

    task.add_done_callback(check)
    return task
