"""The procrastinate app of the worker: its tasks (jobs/tasks.py), opened on the worker's
pool (jobs/worker.py). Importing it reads no settings and opens nothing. Queues and
priorities are db/queue.py's, shared with the web process, which defers by task name."""

from procrastinate import App

from db.procrastinate import AsyncpgConnector

app = App(connector=AsyncpgConnector(), import_paths=["jobs.tasks"])
