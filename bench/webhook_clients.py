"""The webhook provider's HTTP client alone, without database or worker: the current
provider (aiohttp) and the one before issue 10 (httpx) send the same messages to the same
local receiver (bench/sink.py under uvicorn, its own process), beside that receiver's own
rate under wrk, a C client. Rounds interleave the three; medians at the end.

    python3 -m uv run --frozen python bench/webhook_clients.py [--messages 10000] [--rounds 5]

Each provider sends with 32 sends in flight (WORKER_CONCURRENCY) over 8 connections
(WEBHOOK_MAX_CONNECTIONS), on one event loop: what one worker process's client can do at
most.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.deliver import Receiver, receiver_alone  # noqa: E402
from bench.httpx_webhook import HttpxWebhookProvider  # noqa: E402
from jobs.providers import OutgoingMessage, Provider, WebhookProvider  # noqa: E402

IN_FLIGHT = 32
CONNECTIONS = 8


def message(n: int) -> OutgoingMessage:
    return OutgoingMessage(
        f"00000000-0000-4000-8000-000000000001:{n}",
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "bench",
        "email",
        f"p{n}",
        f"user{n}@example{n % 97}.com",
        "bench@example.com",
        "Hello",
        f"Hello p{n}",
    )


async def rate(provider: Provider, messages: int) -> float:
    """Messages per second with IN_FLIGHT sends at once; the first opens a connection."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def send(n: int) -> None:
        async with slots:
            await provider.send(message(n))

    try:
        await provider.send(message(0))
        started = time.perf_counter()
        await asyncio.gather(*(send(n) for n in range(messages)))
        return messages / (time.perf_counter() - started)
    finally:
        await provider.aclose()


async def main(messages: int, rounds: int) -> None:
    receiver = Receiver()
    clients = {
        "aiohttp (now)": WebhookProvider,
        "httpx (before)": HttpxWebhookProvider,
    }
    figures: dict[str, list[float]] = {"receiver alone (wrk)": [], **{c: [] for c in clients}}
    try:
        receiver.wait_ready()
        for round_number in range(1, rounds + 1):
            alone = receiver_alone(receiver.url, CONNECTIONS, seconds=3)
            figures["receiver alone (wrk)"].append(alone)
            for name, kind in clients.items():
                provider = kind(receiver.url, "bench", max_connections=CONNECTIONS)
                figures[name].append(await rate(provider, messages))
            print(
                f"round {round_number}: "
                + ", ".join(f"{name} {values[-1]:.0f}/s" for name, values in figures.items()),
                flush=True,
            )
    finally:
        receiver.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    alone = medians["receiver alone (wrk)"]
    print(f"\nmedians of {rounds} rounds ({messages} messages per client and round):")
    for name, median in medians.items():
        print(f"{name:>22}: {median:8.0f}/s  {median / alone:5.2f}x the receiver alone")
    print(f"{'aiohttp / httpx':>22}: {medians['aiohttp (now)'] / medians['httpx (before)']:5.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.messages, arguments.rounds))
