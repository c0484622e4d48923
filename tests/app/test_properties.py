"""Property-based passes over the OpenAPI document with schemathesis, against the web
process as the Procfile starts it: every operation, with path, query, header and body
values generated from the document (positive) and against it (negative)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.servers import WebProcess
from tests.tokens import bearer

EVERY_BRAND = bearer(brands=["*"])
EXAMPLES = 30  # per operation and mode


def exercise(web: WebProcess, check: Callable[[Any, Any], None]) -> dict[str, str]:
    """Runs `check(case, response)` on generated requests to every operation, in both
    modes; the first failure of each (operation, mode), shrunk by hypothesis."""
    schema = schemathesis.openapi.from_url(f"{web.url}/schema/openapi.json")
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def one(case: Any) -> None:
                headers = {**EVERY_BRAND, **(case.headers or {})}
                check(case, case.call(base_url=web.url, headers=headers, timeout=30))

            try:
                one()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE and not operation.path_parameters
                assert not operation.query and not operation.body  # nothing to violate
            except Exception as exc:
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:2000]
    return failures


def test_no_generated_request_gets_a_5xx(web):
    def no_5xx(case: Any, response: Any) -> None:
        assert response.status_code < 500, (response.status_code, response.text[:500])

    failures = exercise(web, no_5xx)

    assert not failures, "\n\n".join(f"{op}: {why}" for op, why in failures.items())
    log = web.log()
    assert "Traceback" not in log and "internal_error" not in log, log[-3000:]
