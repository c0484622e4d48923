"""The procrastinate app: web defers through it, workers run its tasks."""

from procrastinate import App

from app.settings import get_settings
from jobs.asyncpg_connector import AsyncpgConnector

DELIVERY_QUEUE = "deliveries"

app = App(
    connector=AsyncpgConnector(get_settings().database_url),
    import_paths=["jobs.tasks"],
)


def app_on(connector: AsyncpgConnector) -> App:
    """The same tasks on another connector: a worker's own, so that a worker and a web app
    in one process (tests) never share a pool across event loops. Inside a task, defer
    through `context.app`: a task object stays bound to the module's `app`."""
    worker_app = App(connector=connector, import_paths=app.import_paths)
    worker_app.tasks = app.tasks
    worker_app.periodic_registry = app.periodic_registry
    return worker_app
