"""What a worker process shares between the jobs it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from jobs.delivery import DeliveryConfig
from jobs.providers import Provider


@dataclass(frozen=True)
class WorkerResources:
    pool: asyncpg.Pool
    providers: Mapping[str, Provider]
    sends: asyncio.Semaphore
    """Bounds the sends in flight across all jobs of the process (WORKER_CONCURRENCY)."""
    config: DeliveryConfig
