"""What rendering a personalised message costs, and what the engine choice costs.

    python3 -m uv run --frozen python bench/templates.py [--rounds 5]

A 500-character body with 5 variables of `data`, rendered per recipient: the service's
(app/domain/templates.py: text and `{{ path }}`s only, joined without Liquid), the same
with a `default` filter on each variable (bounded Liquid: strict variables, output and
loop limits), the template in python-liquid without bounds, and in Jinja2's sandbox (the
alternative ADR 0047 weighs; from the dev dependencies). Also the publish-time check of one
recipient's data against the required paths. Medians of `--rounds`, microseconds a call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jinja2.sandbox
import liquid

from app.domain.templates import CampaignTemplates

BODY = (
    "Hello {{ data.first_name }}, your appointment with {{ data.doctor }} is on"
    " {{ data.date }} at {{ data.time }} at the {{ data.clinic }} clinic. "
    + "Please bring your insurance card and arrive ten minutes early. "
    * 6
)[:500]
DATA = {"first_name": "Ana", "doctor": "Dr. Ruiz", "date": "tomorrow", "time": "15:30",
        "clinic": "Elm St"}  # fmt: skip
VARIABLES = {"person_id": "p-1", "recipient": "ana@example.com", "data": DATA,
             "campaign": {"name": "Reminders"}}  # fmt: skip
CALLS = 20_000


def microseconds(rounds: int, call: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(CALLS):
            call()
        times.append((time.perf_counter() - started) / CALLS * 1e6)
    return statistics.median(times)


def main(rounds: int) -> None:
    ours = CampaignTemplates.compile("Your appointment tomorrow", BODY)
    # The same with a filter on each variable: no longer text and paths only, so Liquid.
    filtered = CampaignTemplates.compile(
        "Your appointment tomorrow", BODY.replace(" }}", " | default: '' }}")
    )
    plain = liquid.Environment().from_string(BODY)
    sandboxed = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    jinja = sandboxed.from_string(BODY)
    figures = {
        "this service: subject and body": lambda: ours.render(
            person_id="p-1", recipient="ana@example.com", data=DATA, campaign_name="Reminders"
        ),
        "this service, a `default` filter on each variable": lambda: filtered.render(
            person_id="p-1", recipient="ana@example.com", data=DATA, campaign_name="Reminders"
        ),
        "python-liquid, no bounds, body": lambda: plain.render(**VARIABLES),
        "Jinja2 sandbox, StrictUndefined, body": lambda: jinja.render(**VARIABLES),
        "publish: one recipient's data against the required paths": lambda: ours.missing(DATA),
    }
    print(f"{len(BODY)}-character body, {len(DATA)} variables; us a call, median of {rounds}")
    for name, call in figures.items():
        print(f"{name:>58} {microseconds(rounds, call):8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args().rounds)
