"""The `messaging` command line, against a real server, database and worker."""

from __future__ import annotations

import asyncio
import io
import re
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from app.cli import run
from app.core.settings import DEV_JWT_SECRET
from app.domain.access import PUBLISH, READ
from tests.helpers import create_campaign, publish, recipients
from tests.jobs.delivery_helpers import deliver_until_ended
from tests.tokens import TEST_SECRET
from tests.waiting import PATIENCE


@pytest.fixture
def env(monkeypatch, database_url):
    for name in (
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "MESSAGING_DEV_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    return monkeypatch


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return run(list(argv), out=out), out.getvalue()


def test_token_is_signed_with_the_configured_secret(env):
    env.setenv("JWT_SECRET", TEST_SECRET)

    code, out = cli(
        "token", "--sub", "alice", "--scope", READ, "--scope", PUBLISH, "--brand", "acme"
    )

    assert code == 0
    claims = jwt.decode(out.strip(), TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["scope"] == f"{READ} {PUBLISH}"
    assert claims["brands"] == ["acme"]
    assert 3500 < claims["exp"] - claims["iat"] <= 3600


def test_token_in_development_mode_uses_the_development_secret(env):
    env.setenv("MESSAGING_DEV_MODE", "1")

    code, out = cli("token")

    claims = jwt.decode(out.strip(), DEV_JWT_SECRET, algorithms=["HS256"])
    assert code == 0 and claims["brands"] == ["*"] and len(claims["scope"].split()) == 3


def test_token_without_a_key_fails_with_a_message(env, capsys):
    code, out = cli("token")

    assert (code, out) == (1, "")
    assert "JWT_SECRET" in capsys.readouterr().err


SUMMARY = re.compile(
    r"run (\S+) completed: 50 sent, 0 failed, 0 skipped of 50 in [\d.]+ s \([\d,]+ messages/s\)"
)


async def test_demo_publishes_and_follows_the_run_to_its_summary(env, live_server, db, settings):
    env.setenv("JWT_SECRET", TEST_SECRET)
    argv = ["demo", "--url", live_server, "--recipients", "50", "--interval", "0.05"]
    demo = asyncio.ensure_future(asyncio.to_thread(cli, *argv, "--timeout", "30"))
    async with asyncio.timeout(PATIENCE):
        while (run_id := await db.fetchval("SELECT id::text FROM runs")) is None:
            assert not demo.done(), demo.result()
            await asyncio.sleep(0.02)

    await deliver_until_ended(settings, db, run_id)
    code, out = await demo

    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("campaign ") and f"published run {run_id} to 50" in lines[0]
    assert any(line.startswith("[") and "pending" in line for line in lines[1:-1])
    assert "100%" in lines[-2]
    match = SUMMARY.fullmatch(lines[-1])
    assert match and match.group(1) == run_id


async def test_runs_watch_reads_the_database_or_the_api_and_exits_when_ended(
    env, client, db, settings, live_server
):
    env.setenv("JWT_SECRET", TEST_SECRET)
    campaign = await create_campaign(client)
    body = {"recipients": [*recipients(9), {"person_id": "x", "recipient": "nope"}]}
    run_id = (await publish(client, campaign["id"], body)).json()["id"]
    await deliver_until_ended(settings, db, run_id)

    from_db = await asyncio.to_thread(cli, "runs", "watch", run_id, "--timeout", "5")
    # A thread cannot be cancelled: every watch is bounded by its own --timeout.
    from_api = await asyncio.to_thread(
        cli, "runs", "watch", run_id, "--campaign", campaign["id"], "--url", live_server,
        "--timeout", str(PATIENCE),
    )  # fmt: skip

    for code, out in (from_db, from_api):
        assert code == 0, out
        progress, final = out.splitlines()
        assert "100%" in progress and "sent 9" in progress and "skipped 1" in progress
        assert final.startswith(f"run {run_id} completed: 9 sent, 0 failed, 1 skipped of 10 in ")


async def test_runs_watch_of_an_unknown_run_fails(env, db, capsys):
    codes = [
        (await asyncio.to_thread(cli, "runs", "watch", run, "--timeout", str(PATIENCE)))[0]
        for run in ("00000000-0000-0000-0000-000000000000", "run-42")
    ]

    assert codes == [1, 1]
    errors = capsys.readouterr().err
    assert "no run with that id" in errors and "no run run-42: run ids are UUIDs" in errors


async def test_runs_watch_of_a_scheduled_run_says_when_it_starts(env, client, db, settings):
    env.setenv("JWT_SECRET", TEST_SECRET)
    campaign = await create_campaign(client)
    send_at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    body = {"recipients": recipients(4), "send_at": send_at.isoformat()}
    run_id = (await publish(client, campaign["id"], body)).json()["id"]

    code, out = await asyncio.to_thread(
        cli, "runs", "watch", run_id, "--timeout", "0.2", "--interval", "0.05"
    )

    assert code == 1  # it has not ended when the watch gives up
    line = out.splitlines()[0]
    assert "scheduled" in line and f"starts at {send_at.isoformat()}" in line
    assert "pending 4" in line
