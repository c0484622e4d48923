"""`messaging`: the operator's command line.

    messaging token [--sub S] [--scope SCOPE ...] [--brand B ...]   a development JWT
    messaging demo [--url URL] [--recipients N]                     publish and follow a run
    messaging runs watch RUN_ID [--campaign ID]                     follow any run

Tokens are signed with the configured key (JWT_SECRET, or the public development secret
when MESSAGING_DEV_MODE=1). `runs watch` reads the run through the API when given its
campaign, else the ops_run_progress view through DATABASE_URL (the API names a run only
with its campaign).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import httpx
import jwt

from app.core.settings import Settings, SettingsError
from app.domain.access import PUBLISH, READ, WRITE
from db.ops import OpsRepository
from db.pool import connect
from db.runs import ENDED

CAMPAIGNS = "/v1/messaging/campaigns"
DEFAULT_URL = "http://localhost:8000"


class CliError(Exception):
    """Something the user can fix; printed without a traceback."""


def mint_token(
    settings: Settings,
    *,
    sub: str = "developer",
    scopes: Sequence[str] = (READ, WRITE, PUBLISH),
    brands: Sequence[str] = ("*",),
    ttl: int = 3600,
) -> str:
    if settings.jwt_public_key or settings.jwt_key is None:
        raise CliError(
            "cannot mint a token: set JWT_SECRET (tokens verified by JWT_PUBLIC_KEY or a JWKS are "
            "issued by the identity service), or MESSAGING_DEV_MODE=1 for the development key"
        )
    claims: dict[str, Any] = {
        "sub": sub,
        "scope": " ".join(scopes),
        "brands": list(brands),
        "iat": int(time.time()),
        "exp": int(time.time()) + ttl,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_key, algorithm="HS256")


@dataclass
class Progress:
    status: str
    total: int
    sent: int
    failed: int
    skipped: int
    started_at: datetime | None
    completed_at: datetime | None
    scheduled_for: datetime | None = None

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.completed_at or datetime.now(self.started_at.tzinfo)
        return max((end - self.started_at).total_seconds(), 0.0)

    @property
    def rate(self) -> float | None:
        """Sends (sent or failed) per second since the first attempt."""
        duration = self.duration
        return (self.sent + self.failed) / duration if duration else None

    @classmethod
    def of(cls, run: dict[str, Any]) -> Progress:
        def when(value: Any) -> datetime | None:
            if value is None or isinstance(value, datetime):
                return value
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))

        return cls(
            status=run["status"],
            total=run["total_recipients"],
            sent=run["sent_count"],
            failed=run["failed_count"],
            skipped=run["skipped_count"],
            started_at=when(run["started_at"]),
            completed_at=when(run["completed_at"]),
            scheduled_for=when(run.get("scheduled_for")),
        )


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach {self.http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise CliError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def run(self, campaign_id: str, run_id: str) -> Progress:
        return Progress.of(self.call("GET", f"{CAMPAIGNS}/{campaign_id}/runs/{run_id}"))


@contextmanager
def database_progress(database_url: str, run_id: str) -> Iterator[Callable[[], Progress]]:
    """Reads ops_run_progress (migration 0004, db/ops.py) on one connection for the watch."""
    with asyncio.Runner() as runner:
        conn = runner.run(connect(database_url))
        try:
            yield lambda: _progress(runner.run(OpsRepository(conn).run_progress(_uuid(run_id))))
        finally:
            runner.run(conn.close())


def _uuid(run_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(run_id)
    except ValueError:
        raise CliError(f"no run {run_id}: run ids are UUIDs") from None


def _progress(row: Any) -> Progress:
    if row is None:
        raise CliError("no run with that id")
    return Progress(
        row["status"], row["total"], row["sent"], row["failed"], row["skipped"],
        row["started_at"], row["completed_at"], row["scheduled_for"],
    )  # fmt: skip


def bar(p: Progress, width: int = 30) -> str:
    if p.status == "scheduled" and p.scheduled_for is not None:
        starts = p.scheduled_for.astimezone(UTC).isoformat(timespec="seconds")
        return f"[{'.' * width}]   0%  scheduled  starts at {starts}  pending {p.total:,}"
    filled = width * p.done // p.total if p.total else width
    rate = f"{p.rate:,.0f}/s" if p.rate is not None else "-/s"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {100 * p.done // max(p.total, 1):3d}%  "
        f"{p.status:<9}  sent {p.sent:,}  failed {p.failed:,}  skipped {p.skipped:,}  "
        f"pending {p.total - p.done:,}  {rate}"
    )


def summary(run_id: str, p: Progress) -> str:
    duration = p.duration
    took = f" in {duration:.1f} s" if duration is not None else ""
    rate = f" ({p.rate:,.0f} messages/s)" if p.rate is not None else ""
    return (
        f"run {run_id} {p.status}: {p.sent:,} sent, {p.failed:,} failed, "
        f"{p.skipped:,} skipped of {p.total:,}{took}{rate}"
    )


def watch(
    read: Callable[[], Progress],
    run_id: str,
    out: TextIO,
    *,
    interval: float = 0.5,
    timeout: float | None = None,
) -> Progress:
    """Print progress until the run ended: one redrawn line on a terminal, else a line
    per change. Returns the final progress."""
    live = out.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = ""
    while True:
        progress = read()
        line = bar(progress)
        if live:
            out.write(f"\r{line}\033[K")
            out.flush()
        elif line != shown:
            out.write(line + "\n")
        shown = line
        if progress.status in ENDED:
            if live:
                out.write("\n")
            out.write(summary(run_id, progress) + "\n")
            out.flush()
            return progress
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"run {run_id} has not ended after {timeout} s")
        time.sleep(interval)


def demo(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    brand = args.brand
    with Api(args.url, args.token or mint_token(settings, sub="demo", brands=[brand])) as api:
        return _demo(api, args, out)


def _demo(api: Api, args: argparse.Namespace, out: TextIO) -> int:
    brand = args.brand
    campaign = api.call(
        "POST",
        CAMPAIGNS,
        json={
            "brand_id": brand,
            "name": f"Demo {datetime.now().isoformat(timespec='seconds')}",
            "channel": "email",
            "sender": "demo@example.com",
            "subject": "Hello from the messaging demo",
            "body": "Hello {{person_id}}, this is a demo message.",
        },
    )
    api.call("POST", f"{CAMPAIGNS}/{campaign['id']}/activate")
    recipients = [
        {"person_id": f"demo-{n}", "recipient": f"demo-{n}@example.com"}
        for n in range(args.recipients)
    ]
    started = time.monotonic()
    run = api.call("POST", f"{CAMPAIGNS}/{campaign['id']}/publish", json={"recipients": recipients})
    out.write(
        f"campaign {campaign['id']}: published run {run['id']} to {args.recipients:,} "
        f"recipients in {time.monotonic() - started:.2f} s\n"
    )
    final = watch(
        lambda: api.run(campaign["id"], run["id"]),
        run["id"],
        out,
        interval=args.interval,
        timeout=args.timeout,
    )
    return 0 if final.status == "completed" else 1


def runs_watch(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    options = {"interval": args.interval, "timeout": args.timeout}
    if args.campaign:
        token = args.token or mint_token(settings, sub="watch", scopes=[READ])
        with Api(args.url, token) as api:
            watch(lambda: api.run(args.campaign, args.run_id), args.run_id, out, **options)
    else:
        with database_progress(settings.database_url, args.run_id) as read:
            watch(read, args.run_id, out, **options)
    return 0


def token(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    scopes = args.scope or [READ, WRITE, PUBLISH]
    out.write(
        mint_token(settings, sub=args.sub, scopes=scopes, brands=args.brand or ["*"], ttl=args.ttl)
        + "\n"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="messaging", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)

    p = commands.add_parser("token", help="print a JWT signed with the configured key")
    p.add_argument("--sub", default="developer", help="the caller (default: developer)")
    p.add_argument("--scope", action="append", help="repeatable; default: all three scopes")
    p.add_argument("--brand", action="append", help="repeatable; default: * (every brand)")
    p.add_argument("--ttl", type=int, default=3600, help="seconds of validity (default 3600)")
    p.set_defaults(handler=token)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
        p.add_argument("--token", help="bearer token (default: minted with the configured key)")
        p.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
        p.add_argument("--timeout", type=float, help="give up after this many seconds")

    p = commands.add_parser("demo", help="create, activate and publish an e-mail campaign, "
                            "then follow its run")  # fmt: skip
    client_options(p)
    p.add_argument("--recipients", type=int, default=1000, help="how many (default 1000)")
    p.add_argument("--brand", default="demo", help="brand of the campaign (default demo)")
    p.set_defaults(handler=demo)

    runs = commands.add_parser("runs", help="runs").add_subparsers(dest="runs", required=True)
    p = runs.add_parser("watch", help="live progress of a run until it ends")
    p.add_argument("run_id")
    p.add_argument("--campaign", help="read through the API (else: DATABASE_URL)")
    client_options(p)
    p.set_defaults(handler=runs_watch)
    return root


def run(argv: Sequence[str] | None = None, *, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        handler: Callable[[argparse.Namespace, Settings, TextIO], int] = args.handler
        return handler(args, settings, out)
    except (CliError, SettingsError) as exc:
        print(f"messaging: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(run())
