"""What decoding a request body costs the event loop at its worst (app/http/body.py).

    python3 -m uv run --frozen python bench/json_depth.py [--rounds 5]

For a 100,000-recipient publish body and for crafted bodies of the publish limit (32 MiB),
prints the time of `decode_json` into the publish body's type (what a request costs: typed,
so a wrong shape stops at its first wrong value; nesting bounded by msgspec's recursion
limit) beside msgspec's untyped decode of the same bytes (the baseline: everything built).
Medians of `--rounds`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.domain.decoding import decode_json
from app.domain.errors import InvalidInput
from app.domain.schemas import PublishRequest

LIMIT = 32 * 1024 * 1024
RECIPIENT = b'{"person_id":"p-000001","recipient":"user000001@example.com","time_zone":"UTC"}'
SHORT = b'{"person_id":"p","recipient":"a@b.co","x":'


def bodies() -> dict[str, bytes]:
    chain = b"[" * 31 + b"]" * 31
    deep = b"[" * 499 + b"]" * 499
    return {
        "publish, 100,000 recipients": b'{"recipients":['
        + b",".join([RECIPIENT] * 100_000)
        + b"]}",
        "32 MiB of ']'": b"]" * LIMIT,
        "32 MiB of '['": b"[" * LIMIT,
        "32 MiB of 32-deep chains": b"[" + b",".join([chain] * (LIMIT // 63)) + b"]",
        "32 MiB of strings holding '['": b"[" + b",".join([b'"[[[["'] * (LIMIT // 7)) + b"]",
        "an unknown field: 32 MiB of 500-deep chains": b'{"recipients":[' + SHORT[:-5] + b"}],"
        b'"x":[' + b",".join([deep] * (LIMIT // 1000)) + b"]}",
        "recipients with 200-deep unknown fields": b'{"recipients":['
        + b",".join([SHORT + b"[" * 200 + b"]" * 200 + b"}"] * (LIMIT // 450))
        + b"]}",
        "100,000 levels deep in an unknown field": b'{"recipients":[],"x":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
    }


def median_of(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with contextlib.suppress(InvalidInput, msgspec.DecodeError, RecursionError):
            work()  # a crafted body: its refusal is the work measured
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(rounds: int) -> None:
    print(f"{'body':>44} {'MB':>6} {'request ms':>11} {'untyped ms':>11}")
    for name, body in bodies().items():
        typed = median_of(
            rounds, lambda body=body: decode_json("application/json", body, PublishRequest)
        )
        untyped = median_of(rounds, lambda body=body: msgspec.json.decode(body))
        mb = len(body) / 1e6
        print(f"{name:>44} {mb:6.1f} {typed * 1000:11.1f} {untyped * 1000:11.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args().rounds)
