"""Prometheus metrics of the worker process, served on WORKER_METRICS_PORT (jobs/worker.py).

The hot path (one observation per send) touches cached label children only: no label
lookup, no dict built per message.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "messaging_deliveries",
    "Delivery attempts by outcome: sent, failed, retry (transient, tried again later), "
    "skipped (suppressed while the run went on).",
    ["channel", "provider", "outcome"],
)
PROVIDER_LATENCY = Histogram(
    "messaging_provider_latency_seconds",
    "Time the provider took to accept or refuse one message.",
    ["channel", "provider"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Outcome.status of jobs/delivery.py -> the outcome label.
_OUTCOMES = {"sent": "sent", "failed": "failed", "skipped": "skipped", "pending": "retry"}


@cache
def provider_latency(channel: str, provider: str) -> Histogram:
    child: Histogram = PROVIDER_LATENCY.labels(channel, provider)
    return child


@cache
def _deliveries(channel: str, provider: str, status: str) -> Counter:
    child: Counter = DELIVERIES.labels(channel, provider, _OUTCOMES[status])
    return child


def count_outcomes(channel: str, provider: str, counts: Iterable[tuple[str, int]]) -> None:
    """Add one window's outcomes, given as (Outcome.status, how many)."""
    for status, n in counts:
        _deliveries(channel, provider, status).inc(n)
