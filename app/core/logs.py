"""One JSON object per log line, for web and worker alike.

Fields that hold for a whole request or job (request_id; run_id, job_id) are bound once in
a contextvar (`bind_log_context`) and added to every line logged meanwhile, whichever
module logs it. Never log message bodies or subjects, and addresses only `masked`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import msgspec
from asyncpg import PostgresError

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_STANDARD = _RESERVED | {"taskName", "color_message"}

_make_record = logging.Logger.makeRecord


def _make_record_that_cannot_raise(
    self: logging.Logger,
    name: str,
    level: int,
    fn: str,
    lno: int,
    msg: object,
    args: Any,
    exc_info: Any,
    func: str | None = None,
    extra: Mapping[str, object] | None = None,
    sinfo: str | None = None,
) -> logging.LogRecord:
    """Logger.makeRecord raises KeyError for an `extra` key that names a LogRecord
    attribute (`args`, `name`, `msg`, ...): a log call in a recovery loop once killed the
    loop that way. Here such a key is logged as `extra_<key>` instead, for every logger of
    the process (procrastinate's too)."""
    if extra and not _RESERVED.isdisjoint(extra):
        extra = {f"extra_{k}" if k in _RESERVED else k: v for k, v in extra.items()}
    return _make_record(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)


logging.Logger.makeRecord = _make_record_that_cannot_raise  # type: ignore[method-assign]


_context: ContextVar[dict[str, Any]] = ContextVar("log_context")


@contextmanager
def bind_log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every log line of the current task until the block ends."""
    token = _context.set({**_context.get({}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bound(name: str) -> Any:
    """What `bind_log_context` bound as `name` in the current task, or None: the
    request's `request_id` (app/http/request_id.py) for whatever records it besides logs."""
    return _context.get({}).get(name)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (an explicit `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get({}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def masked(address: str) -> str:
    """Enough of an address to tell deliveries apart in a log, not enough to be one:
    `u***@example.com`, `+44***89`."""
    if "@" in address:
        local, _, domain = address.rpartition("@")
        return f"{local[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}" if len(address) > 6 else "***"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line, enc_hook=str).decode()

    def formatException(self, ei: Any) -> str:
        """The traceback, without PostgreSQL's DETAIL: it quotes the row a statement
        failed on ("Failing row contains (brand-a, <address>, ...)", "Key (...)=(...)"),
        and asyncpg puts it into the error's text. The message and SQLSTATE stay."""
        text = super().formatException(ei)
        seen: set[int] = set()
        error = ei[1]
        while isinstance(error, BaseException) and id(error) not in seen:
            seen.add(id(error))
            if isinstance(error, PostgresError) and error.detail:
                text = text.replace(f"\nDETAIL:  {error.detail}", "\nDETAIL:  (withheld)")
            error = error.__cause__ or error.__context__
        return text


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler that writes one JSON object per line, with the bound context fields."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: str = "INFO") -> None:
    # What no line of ours shows, not gathered for each record either (the logging
    # HOWTO's "Optimization"): the caller's file and line, thread, process. About 2 us of
    # the 13 us a record costs, once per message with the `log` provider.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [json_handler()]
    root.setLevel(level)
    # uvicorn installs its own handlers; route its error log through ours. Its access
    # log stays as uvicorn's flags leave it (off in the Procfile).
    # httpx logs every request at INFO: the worker's webhook sends would flood the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
