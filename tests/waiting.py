"""How long tests wait, and waits that fail saying what did not happen instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PATIENCE = 60.0
"""Seconds a test waits for what another process or thread does (a server up, a run
ended, a row written): generous, so that a loaded machine makes a test slower, never
failed. A passing test does not wait that long; bounds that a test asserts are set apart,
each with its reason."""

GONE = 10.0
"""Seconds a killed process, a cancelled task or a stopped fake server may take to be gone:
milliseconds when all is well; past this, something holds it."""

MAX_PAGES = 1000
"""Pages a walk of a listing may take: more than any test lists (one item a page), far fewer
than a walk whose cursors go round in circles would take for ever."""


@contextlib.contextmanager
def collector_held_off() -> Iterator[None]:
    """Around a latency this process measures: its garbage collector is held off. A test
    process has a large heap, and its full collections took up to 1.1 s beside the suite's
    other tests (a CI run failed on one), which is no latency of what is measured."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def pages(what: str, most: int = MAX_PAGES) -> Iterator[int]:
    """The pages of a walk that follows cursors (`for _ in pages(...)`, breaking at the last
    page): past `most` of them, the test fails saying `what` had no end."""
    yield from range(most)
    raise AssertionError(f"{what}: still no last page after {most} pages")


@contextlib.asynccontextmanager
async def bounded(
    what: str, seconds: float = PATIENCE, log: Path | None = None
) -> AsyncIterator[None]:
    """asyncio.timeout, whose failure says `what` did not happen, with the end of the `log`
    of the process it waited for."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError as error:
        if timeout.expired():
            raise AssertionError(f"{what}: not within {seconds:g} s{log_tail(log)}") from error
        raise


async def within(seconds: float, awaitable: Awaitable[T], what: str) -> T:
    """The result of `awaitable`, which must come within `seconds`; else the test fails
    saying `what` did not happen, and where it was waiting. Unlike asyncio.timeout, this
    bounds a task that takes its time to end once cancelled too (an in-process worker waits
    for its jobs, then for its pool's connections): it is cancelled, and left."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        chain = await_chain(task)
        task.cancel()
        raise AssertionError(f"{what}: not within {seconds:g} s; it was waiting at\n{chain}")
    return task.result()


def returned(call: Callable[[], object], what: str, seconds: float = GONE) -> None:
    """`call()`, a blocking call with no bound of its own (a server's stop that joins its
    threads), in a thread of its own: the test fails if it has not returned within
    `seconds`, saying `what` did not happen (the thread is left, a daemon)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{what}: not within {seconds:g} s")
    if failed:
        raise failed[0]


def await_chain(task: asyncio.Task[Any]) -> str:
    """Where `task` waits: file:line of each coroutine down its chain of awaits, one a line
    (Task.print_stack shows the first one only)."""
    lines = []
    awaiting: Any = task.get_coro()
    while awaiting is not None:
        if frame := getattr(awaiting, "cr_frame", None) or getattr(awaiting, "ag_frame", None):
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno}")
        awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "ag_await", None)
    return "\n".join(lines)


# Processes a test starts: subprocess.Popen ones, or asyncio's (asyncio.subprocess.Process).
# Both are polled for their exit: asyncio's Process.wait() also waits for its pipes to close.


def returncode(process: Any) -> int | None:
    """The exit status of `process`, None while it runs."""
    status: int | None = (
        process.poll() if isinstance(process, subprocess.Popen) else process.returncode
    )
    return status


def log_tail(log: Path | None) -> str:
    if log is None:
        return ""
    return "; its log ends:\n" + log.read_text(errors="replace")[-3000:]


async def exited(process: Any, seconds: float, what: str, log: Path | None = None) -> int:
    """The exit status of `process`, which must exit within `seconds`; else it is killed and
    the test fails saying `what` did not happen, with the end of its `log`."""
    deadline = time.monotonic() + seconds
    while (status := returncode(process)) is None:
        if time.monotonic() > deadline:
            await killed(process)
            raise AssertionError(f"{what}: not within {seconds:g} s, killed{log_tail(log)}")
        await asyncio.sleep(0.05)
    return status


async def stopped(process: Any, what: str, log: Path | None = None) -> int:
    """SIGTERM, and the exit status once `process` has exited (PATIENCE at most, see
    `exited`)."""
    if returncode(process) is None:
        process.send_signal(signal.SIGTERM)
    return await exited(process, PATIENCE, what, log)


async def killed(process: Any) -> None:
    """SIGKILL, if `process` still runs, and its end: for `finally:` blocks."""
    if returncode(process) is None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            process.kill()
    deadline = time.monotonic() + GONE
    while returncode(process) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"process {process.pid} still runs {GONE:g} s after SIGKILL")
        await asyncio.sleep(0.02)


async def communicated(
    process: asyncio.subprocess.Process, seconds: float, what: str
) -> tuple[bytes, bytes]:
    """`process.communicate()`: what the process wrote to its pipes until it exited, which
    must be within `seconds`; else it is killed and the test fails saying `what` did not
    happen, with the end of what it wrote."""
    reading = asyncio.ensure_future(process.communicate())
    done, _ = await asyncio.wait({reading}, timeout=seconds)
    if not done:
        await killed(process)
        done, _ = await asyncio.wait({reading}, timeout=GONE)  # the rest of its pipes
        written = b"".join(part or b"" for part in reading.result()) if done else b""
        reading.cancel()
        raise AssertionError(
            f"{what}: not within {seconds:g} s, killed; it wrote:\n"
            + written[-3000:].decode(errors="replace")
        )
    out, err = reading.result()
    return out or b"", err or b""
