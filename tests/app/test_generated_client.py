"""A typed client generated from /schema/openapi.json with openapi-python-client, as other
services of the platform generate theirs, drives the web process: the document is usable
as it is."""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx

from tests.tokens import make_token
from tests.waiting import PATIENCE, communicated
from tests.web import WebProcess

PACKAGE = "messaging_client"
OPERATIONS = (
    "create_campaign",
    "activate_campaign",
    "publish_campaign",
    "read_run",
    "read_campaign",
)


async def generate_client(web: WebProcess, directory: Path) -> None:
    async with httpx.AsyncClient(base_url=web.url) as http:
        document = (await http.get("/schema/openapi.json")).text
    (directory / "openapi.json").write_text(document)
    (directory / "config.yaml").write_text(f"post_hooks: []\npackage_name_override: {PACKAGE}\n")
    generator = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "openapi_python_client", "generate"),
        *("--path", str(directory / "openapi.json"), "--config", str(directory / "config.yaml")),
        *("--output-path", str(directory / PACKAGE), "--meta", "none"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await communicated(generator, PATIENCE, "the client's generation"))[0].decode()
    # A warning means a part of the document the generator had to skip.
    assert generator.returncode == 0 and "Warning" not in output, output


async def test_a_generated_client_creates_activates_publishes_and_reads_the_run(web, tmp_path):
    await generate_client(web, tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module(PACKAGE)
        api = SimpleNamespace(
            **{
                name: importlib.import_module(f"{PACKAGE}.api.campaigns.{name}")
                for name in OPERATIONS
            }
        )
        models = importlib.import_module(f"{PACKAGE}.models")
        token = make_token()
        async with client_module.AuthenticatedClient(base_url=web.url, token=token) as client:
            draft = await api.create_campaign.asyncio(
                client=client,
                body=models.CampaignCreate(
                    brand_id="brand-a",
                    name="Winter check-up",
                    channel=models.CampaignCreateChannel.EMAIL,
                    body="Hello {{person_id}}",
                    subject="Your check-up",
                ),
            )
            active = await api.activate_campaign.asyncio(draft.id, client=client)
            queued = await api.publish_campaign.asyncio_detailed(
                active.id,
                client=client,
                body=models.PublishRequest(
                    recipients=[
                        models.Recipient(person_id="p1", recipient="ann@example.com"),
                        models.Recipient(person_id="p2", recipient="not an address"),
                    ]
                ),
                idempotency_key="first-try",
            )
            run = await api.read_run.asyncio(active.id, queued.parsed.id, client=client)
            unknown = await api.read_campaign.asyncio_detailed(queued.parsed.id, client=client)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]

    assert isinstance(draft, models.Campaign) and draft.status == models.CampaignStatus.DRAFT
    assert active.status == models.CampaignStatus.ACTIVE
    assert queued.status_code == 202
    assert queued.headers["location"] == f"/v1/messaging/campaigns/{active.id}/runs/{run.id}"
    assert isinstance(run, models.Run) and run.id == queued.parsed.id
    assert (run.campaign_id, run.total_recipients, run.skipped_count) == (active.id, 2, 1)
    assert run.status in (models.RunStatus.QUEUED, models.RunStatus.RUNNING)
    # Errors come back typed as well.
    assert unknown.status_code == 404 and isinstance(unknown.parsed, models.Error)
    assert unknown.parsed.error == "not_found"
