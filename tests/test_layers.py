"""The layers as the import graph sees them: the web process loads nothing of the worker,
and importing the worker's procrastinate app reads no settings. (The layer order itself
is import-linter's contract in pyproject.toml, run by .ci/run.)"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.waiting import PATIENCE
from tests.web import ROOT

WORKER_ONLY = ("jobs.delivery", "jobs.providers", "jobs.tasks", "aiohttp", "aiosmtplib")


def imported_by(statement: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter has loaded after `statement`."""
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=PATIENCE,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_web_process_loads_none_of_the_worker():
    loaded = imported_by("import app.http.asgi")
    assert "app.http.asgi" in loaded
    assert {m for m in loaded if m.startswith(WORKER_ONLY)} == set()


def test_importing_the_worker_app_reads_no_settings():
    # An environment the settings refuse: importing would fail if they were read.
    env = {"PATH": "/usr/bin:/bin", "DELIVERY_BATCH_SIZE": "0"}
    loaded = imported_by(
        "import jobs.app\nfrom app.core.settings import get_settings\n"
        "assert get_settings.cache_info().currsize == 0",
        env,
    )
    assert "jobs.app" in loaded
