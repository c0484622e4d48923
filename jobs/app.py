"""The procrastinate app. Workers open it on their pool and run its tasks; web never opens
it: publish defers on its own transaction's connection (`configure(connection=conn)`),
which needs no pool of the app's."""

from procrastinate import App

from app.settings import get_settings
from jobs.asyncpg_connector import AsyncpgConnector

DELIVERY_QUEUE = "deliveries"
MAINTENANCE_QUEUE = "maintenance"
"""Housekeeping (periodic purges), apart from deliveries in the queue views."""
EVENTS_QUEUE = "events"
"""Run events POSTed to EVENTS_WEBHOOK_URL (jobs/run_events.py)."""

app = App(
    connector=AsyncpgConnector(get_settings().database_url),
    import_paths=["jobs.tasks"],
)
