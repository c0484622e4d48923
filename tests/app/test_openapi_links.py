"""OpenAPI links: the campaign a response holds leads to the operations on that campaign,
the run to the operations on that run; followed here as a generic client would."""

from __future__ import annotations

import re
from typing import Any

from tests.helpers import CAMPAIGNS, recipients
from tests.tokens import bearer

CAMPAIGN_OPERATIONS = {
    "readCampaign",
    "updateCampaign",
    "activateCampaign",
    "archiveCampaign",
    "publishCampaign",
}
RUN_OPERATIONS = {"readRun", "cancelRun", "listDeliveries"}


def operations(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId -> (method, path, operation)."""
    return {
        operation["operationId"]: (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def follow(document: dict[str, Any], link: dict[str, Any], body: dict[str, Any]) -> tuple[str, str]:
    """The method and URL a link leads to from a response `body`."""
    method, path, _ = operations(document)[link["operationId"]]
    values = {}
    for name, expression in link["parameters"].items():
        assert expression.startswith("$response.body#/"), expression
        values[name] = body[expression.removeprefix("$response.body#/")]
    return method, re.sub(r"\{(\w+)\}", lambda m: str(values[m[1]]), path)


async def test_create_leads_to_the_campaign_and_publish_to_the_run(client):
    document = (await client.get("/schema/openapi.json")).json()
    create = document["paths"][CAMPAIGNS]["post"]["responses"]["201"]["links"]
    publish = document["paths"][f"{CAMPAIGNS}/{{id}}/publish"]["post"]["responses"]["202"]
    by_id = operations(document)

    assert set(create) >= CAMPAIGN_OPERATIONS
    assert set(publish["links"]) >= RUN_OPERATIONS
    for operation in by_id.values():
        for response in operation[2]["responses"].values():
            for link in response.get("links", {}).values():
                _, _path, target = by_id[link["operationId"]]
                in_path = {p["name"] for p in target["parameters"] if p["in"] == "path"}
                assert set(link["parameters"]) == in_path, (operation[1], link)

    # Followed from real responses, as a generic client walks the API.
    headers = bearer()
    body = {"brand_id": "brand-a", "name": "n", "channel": "sms", "body": "b"}
    campaign = (await client.post(CAMPAIGNS, json=body, headers=headers)).json()
    steps = [
        ("updateCampaign", {"json": {"name": "m"}}, 200),
        ("readCampaign", {}, 200),
        ("activateCampaign", {}, 200),
        ("publishCampaign", {"json": {"recipients": recipients(2)}}, 202),
    ]
    for operation_id, request, status in steps:
        method, url = follow(document, create[operation_id], campaign)
        response = await client.request(method, url, headers=headers, **request)
        assert response.status_code == status, (operation_id, response.text)
    run = response.json()
    assert response.headers["location"] == follow(document, publish["links"]["readRun"], run)[1]
    for operation_id in ("readRun", "listDeliveries", "cancelRun"):
        method, url = follow(document, publish["links"][operation_id], run)
        response = await client.request(method, url, headers=headers)
        assert response.status_code == 200, (operation_id, response.text)
    method, url = follow(document, create["archiveCampaign"], campaign)
    assert (await client.request(method, url, headers=headers)).status_code == 200


async def test_retry_of_a_run_is_linked_from_publish_and_leads_on(client):
    """The retry route declares nothing about links: the rule that links every operation
    on a run from every response holding a run covers it."""
    document = (await client.get("/schema/openapi.json")).json()

    path = f"{CAMPAIGNS}/{{id}}"
    publish = document["paths"][f"{path}/publish"]["post"]["responses"]["202"]["links"]
    retried = document["paths"][f"{path}/runs/{{run_id}}/retry"]["post"]["responses"]["202"]
    assert publish["retryRun"] == {
        "operationId": "retryRun",
        "parameters": {"id": "$response.body#/campaign_id", "run_id": "$response.body#/id"},
    }
    # The new run it answers leads on as well, and carries its Location.
    assert set(retried["links"]) >= RUN_OPERATIONS
    assert retried["headers"]["Location"]["required"] is True
