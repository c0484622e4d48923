"""What the nesting check of request bodies (app/body.py) costs the event loop.

    python3 -m uv run --frozen python bench/json_depth.py [--rounds 5]

For a 100,000-recipient publish body and for crafted bodies of the publish limit (32 MiB),
prints the time of `nested_at_most` beside msgspec's own untyped decode of the same bytes
(the baseline: what reading the body costs anyway). Medians of `--rounds`.
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

from app.body import MAX_JSON_DEPTH, nested_at_most

LIMIT = 32 * 1024 * 1024
RECIPIENT = b'{"person_id":"p-000001","recipient":"user000001@example.com","time_zone":"UTC"}'


def bodies() -> dict[str, bytes]:
    # Inside the outer array: 32 levels in all, the deepest a body may be.
    chain = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
    return {
        "publish, 100,000 recipients": b'{"recipients":['
        + b",".join([RECIPIENT] * 100_000)
        + b"]}",
        "the same, one '[' in a string": b'{"recipients":['
        + b",".join([RECIPIENT] * 99_999 + [RECIPIENT.replace(b"p-", b"[-")])
        + b"]}",
        "32 MiB of ']'": b"]" * LIMIT,
        "32 MiB of '['": b"[" * LIMIT,
        "32 MiB of 32-deep chains": b"[" + b",".join([chain] * (LIMIT // 63)) + b"]",
        "32 MiB of strings holding '['": b"[" + b",".join([b'"[[[["'] * (LIMIT // 7)) + b"]",
        "32 MiB, 33 levels deep at the end": b"["
        + b",".join([chain] * (LIMIT // 63 - 1) + [b"[" + chain + b"]"])
        + b"]",
    }


def best_of(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with contextlib.suppress(msgspec.DecodeError, RecursionError):
            work()  # a crafted body: its refusal is the work measured
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(rounds: int) -> None:
    print(f"{'body':>34} {'MB':>6} {'check ms':>9} {'msgspec ms':>11} {'ratio':>6}")
    for name, body in bodies().items():
        check = best_of(rounds, lambda body=body: nested_at_most(body, MAX_JSON_DEPTH))
        decode = best_of(rounds, lambda body=body: msgspec.json.decode(body))
        mb = len(body) / 1e6
        print(
            f"{name:>34} {mb:6.1f} {check * 1000:9.1f} {decode * 1000:11.1f} {check / decode:6.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args().rounds)
