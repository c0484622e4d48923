"""Background loops: a failed round is logged with its traceback and the next one runs; a
loop that ends for good is reported, never silent."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.core import supervision


async def test_a_round_that_raises_is_logged_with_its_traceback_and_the_loop_goes_on(caplog):
    rounds: list[int] = []

    async def round_() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise KeyError("Attempt to overwrite 'args' in LogRecord")

    loop = asyncio.create_task(supervision.every(0.01, round_, name="recovery"))
    async with asyncio.timeout(5):
        while len(rounds) < 3:  # noqa: ASYNC110 - the loop under test is the event
            await asyncio.sleep(0.01)
    loop.cancel()

    failed = [r for r in caplog.records if "recovery: round failed unexpectedly" in r.message]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is KeyError
    assert not loop.done() or loop.cancelled()


async def test_an_expected_error_is_one_warning_line(caplog):
    rounds: list[int] = []

    async def round_() -> None:
        rounds.append(1)
        raise ConnectionRefusedError("database away")

    loop = asyncio.create_task(
        supervision.every(0.01, round_, name="heartbeat", expected=(OSError,))
    )
    async with asyncio.timeout(5):
        while len(rounds) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    loop.cancel()

    warnings = [r for r in caplog.records if r.message.startswith("heartbeat: round failed")]
    assert warnings and all(r.levelno == logging.WARNING and not r.exc_info for r in warnings)


@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_a_task_that_ends_is_reported_and_calls_on_death(caplog, ending):
    died = asyncio.Event()

    async def body() -> None:
        if ending == "raises":
            raise RuntimeError("boom")

    supervision.start(body(), name="listener", on_death=died.set)

    async with asyncio.timeout(5):
        await died.wait()
    [critical] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "background task listener ended" in critical.message


async def test_a_cancelled_task_is_no_death():
    died = asyncio.Event()
    task = supervision.start(asyncio.sleep(10), name="heartbeat", on_death=died.set)

    task.cancel()
    await asyncio.sleep(0.01)

    assert task.cancelled() and not died.is_set()
