"""The `log` provider's rate and a worker's CPU per message, this code beside a copy of older code.

    python3 -m uv run --frozen python bench/worker_cpu.py --before DIR   # --pairs 3
    python3 -m uv run --frozen python bench/worker_cpu.py --template     # --pairs 3

DIR is `git archive <rev> | tar -x -C DIR`. Each pair publishes `--recipients` (60,000)
to the bench database (as bench/deliver.py), starts one worker of this code, waits for the
run to complete, then the same with the worker of DIR. Prints, per worker: messages per
second (first send to completion, the runs' own clock) and the worker process's CPU per
message while it sends (user + system from /proc, from the first look that sees sends to
completion: start-up, whose imports differ between versions, left out), and the ratio of
each pair.

With --template, each pair is this code twice: a campaign without variables, then one
whose body is a 500-character template with 5 variables of each recipient's `data`
(bench/templates.py's). The difference of their CPU per message is what rendering costs
the worker (issue 24: at most 30 us), and the ratio of their rates what it costs the rate
(at least 0.75x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.deliver import DATABASE_URL, connect, publish, reset  # noqa: E402
from bench.publish import prepare_database  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def deliver(code: Path, recipients: int, template: bool = False) -> tuple[float, float]:
    """Messages per second and CPU microseconds per message of one worker of `code`; with
    `template`, of a personalised campaign."""
    conn = await connect(DATABASE_URL)
    try:
        await reset(conn)
        run_id = await publish(conn, recipients, 500, template=template)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env |= {"DATABASE_URL": DATABASE_URL, "LOG_LEVEL": "INFO"}
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobs.worker"],
            cwd=code,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            first: tuple[int, float] | None = None  # (sent, CPU seconds) once sending
            while True:
                row = await conn.fetchrow(
                    "SELECT status, sent_count, completed_at - started_at AS took FROM runs"
                    " WHERE id = $1",
                    run_id,
                )
                if row["status"] == "completed":
                    break
                if first is None and row["sent_count"]:
                    first = (row["sent_count"], cpu_seconds(worker.pid))
                if worker.poll() is not None:
                    raise SystemExit(f"the worker of {code} exited")
                await asyncio.sleep(0.02)
            cpu = cpu_seconds(worker.pid)
        finally:
            worker.terminate()
            worker.wait()
    finally:
        await conn.close()
    if first is None:
        raise SystemExit("the run completed between two looks: give it more recipients")
    sent, cpu_at_first = first
    steady = (cpu - cpu_at_first) * 1e6 / (row["sent_count"] - sent)
    return row["sent_count"] / row["took"].total_seconds(), steady


async def main(before: Path, pairs: int, recipients: int) -> None:
    await prepare_database(DATABASE_URL)
    ratios, cpu_ratios = [], []
    for n in range(pairs):
        now_rate, now_cpu = await deliver(ROOT, recipients)
        old_rate, old_cpu = await deliver(before, recipients)
        ratios.append(now_rate / old_rate)
        cpu_ratios.append(now_cpu / old_cpu)
        print(
            f"pair {n + 1}: this code {now_rate:7.0f} msg/s {now_cpu:6.1f} us/msg;"
            f" {before} {old_rate:7.0f} msg/s {old_cpu:6.1f} us/msg; ratio {ratios[-1]:.2f}x"
        )
    print(
        f"median of {pairs} pairs: rate {statistics.median(ratios):.2f}x,"
        f" CPU per message {statistics.median(cpu_ratios):.2f}x"
    )


async def rendering(pairs: int, recipients: int) -> None:
    await prepare_database(DATABASE_URL)
    costs, ratios = [], []
    for n in range(pairs):
        plain_rate, plain_cpu = await deliver(ROOT, recipients)
        rate, cpu = await deliver(ROOT, recipients, template=True)
        costs.append(cpu - plain_cpu)
        ratios.append(rate / plain_rate)
        print(
            f"pair {n + 1}: no variables {plain_rate:7.0f} msg/s {plain_cpu:6.1f} us/msg;"
            f" template {rate:7.0f} msg/s {cpu:6.1f} us/msg; rendering {costs[-1]:5.1f} us/msg,"
            f" rate {ratios[-1]:.2f}x"
        )
    print(
        f"median of {pairs} pairs: rendering {statistics.median(costs):.1f} us of worker CPU"
        f" per message, rate with the template {statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--before", type=Path)
    chosen.add_argument(
        "--template", action="store_true", help="this code, without and with a template"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=60_000)
    arguments = parser.parse_args()
    if arguments.template:
        asyncio.run(rendering(arguments.pairs, arguments.recipients))
    else:
        asyncio.run(main(arguments.before, arguments.pairs, arguments.recipients))
