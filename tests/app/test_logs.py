"""JSON log lines: a request's lines carry its X-Request-ID; a job's lines its run and job;
no address nor message text at INFO."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.logs import json_handler
from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import deliver_until_ended
from tests.tokens import bearer

ROOT = Path(__file__).resolve().parents[2]


class JsonLines:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]

    def with_message(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["message"].startswith(message)]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[JsonLines]:
    """What the processes write (app.core.logs.json_handler), at INFO."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    caplog.set_level(logging.INFO)
    root.addHandler(handler)
    try:
        yield JsonLines(stream)
    finally:
        root.removeHandler(handler)


async def test_a_request_logs_with_the_request_id_it_answers_with(client, logs):
    campaign = await create_campaign(client)
    response = await client.post(
        f"/v1/messaging/campaigns/{campaign['id']}/publish",
        json={"recipients": recipients(3)},
        headers={**bearer(), "X-Request-ID": "req-42.abc"},
    )

    assert response.status_code == 202
    assert response.headers["X-Request-ID"] == "req-42.abc"
    [line] = logs.with_message("run published")
    assert line["request_id"] == "req-42.abc"
    assert line["run_id"] == response.json()["id"]
    assert (line["level"], line["recipients"]) == ("info", 3)


async def test_an_insane_request_id_is_replaced_and_logged_as_replaced(client, logs):
    campaign = await create_campaign(client)
    response = await client.post(
        f"/v1/messaging/campaigns/{campaign['id']}/publish",
        json={"recipients": recipients(1)},
        headers={**bearer(), "X-Request-ID": "no spaces; please"},
    )

    given = response.headers["X-Request-ID"]
    assert given != "no spaces; please"
    [line] = logs.with_message("run published")
    assert line["request_id"] == given


async def test_worker_logs_carry_run_and_job_but_no_address_nor_text(
    client, db, settings, logs, caplog
):
    campaign = await create_campaign(client)
    people = recipients(25, domain="secret-clinic.example")
    run = (await publish(client, campaign["id"], {"recipients": people})).json()

    await deliver_until_ended(settings, db, run["id"])

    chunks = logs.with_message("chunk delivered")
    assert chunks and all(line["run_id"] == run["id"] and line["job_id"] for line in chunks)
    sends = logs.with_message("delivered")
    assert len(sends) == 25
    assert all(line["run_id"] == run["id"] and line["job_id"] for line in sends)
    assert {line["delivery_id"] for line in sends} == {f"{run['id']}:{n}" for n in range(25)}
    # Neither the written lines nor any INFO record hold an address or the campaign's text.
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    everything = logs.text + "\n".join(f"{r.getMessage()} {vars(r)}" for r in info)
    for person in people:
        assert person["recipient"] not in everything
    assert campaign["body"] not in everything and campaign["subject"] not in everything


def test_an_extra_key_that_names_a_record_attribute_is_logged_not_raised(logs):
    # `args` once killed the recovery loop: Logger.makeRecord raises KeyError for it.
    logging.getLogger("jobs.worker").warning(
        "requeued", extra={"args": {"run_id": "r"}, "name": "n", "job_id": 7}
    )

    (line,) = logs.with_message("requeued")
    assert line["extra_args"] == {"run_id": "r"}
    assert line["extra_name"] == "n" and line["logger"] == "jobs.worker"
    assert line["job_id"] == 7


def test_no_log_call_of_ours_passes_a_record_attribute_in_extra():
    """Such a key would only be renamed (above), so that what the code meant to log under
    it would be logged under another name: none of ours may use one."""
    reserved = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
    offending = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.parts[len(ROOT.parts)] not in {"app", "jobs", "db", "bench"}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                    keys = {k.value for k in keyword.value.keys if isinstance(k, ast.Constant)}
                    offending += [f"{path.name}:{node.lineno} {k}" for k in keys & reserved]
    assert offending == []
