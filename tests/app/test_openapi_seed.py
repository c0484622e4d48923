"""The publish operation of /schema/openapi.json against the seed that specifies it
(`../shared/seed/000_ee4991139a520215.txt`), field by field: the document may be richer
than the seed (more fields, more statuses, tighter bounds), never different."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seed" / "000_ee4991139a520215.txt"


def seed_operation() -> dict[str, Any]:
    """The seed page's method, path, path parameters, request and response schemas."""
    text = SEED.read_text()
    method, path = text.splitlines()[0].replace("\\", "").split()
    decoder = json.JSONDecoder()

    def schema_at(index: int) -> Any:
        return decoder.raw_decode(text, text.index("{", index))[0]

    responses = {
        match[1]: schema_at(match.end())
        for match in re.finditer(r"(\d{3}) [A-Z][A-Za-z ]*\n(?=\{)", text)
    }
    return {
        "method": method.lower(),
        "path": path,
        "path_parameters": dict(re.findall(r"^(\w+)\((\w+)\) required", text, re.MULTILINE)),
        "request": schema_at(text.index("Request body")),
        "responses": responses,
    }


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def types_of(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    schema = resolve(document, schema)
    if "type" in schema:
        kind = schema["type"]
        return set(kind) if isinstance(kind, list) else {kind}
    alternatives = schema.get("oneOf") or schema.get("anyOf") or []
    return {t for member in alternatives for t in types_of(document, member)}


def differences(
    document: dict[str, Any],
    ours: dict[str, Any],
    seed: dict[str, Any],
    where: str,
    *,
    request: bool,
) -> list[str]:
    """How `ours` (a schema of the document) differs from `seed`; [] if it only refines it."""
    ours = resolve(document, ours)
    problems = []
    seed_types, our_types = types_of(document, seed), types_of(document, ours)
    # An integer is a number: a narrower type is a refinement, not a difference.
    if our_types != seed_types and our_types != (seed_types - {"number"}) | {"integer"}:
        problems.append(f"{where}: type {sorted(our_types)}, seed {sorted(seed_types)}")
    for name, field in seed.get("properties", {}).items():
        if name not in ours.get("properties", {}):
            problems.append(f"{where}.{name}: missing")
        else:
            problems += differences(
                document, ours["properties"][name], field, f"{where}.{name}", request=request
            )
    seed_required, our_required = set(seed.get("required", [])), set(ours.get("required", []))
    if not seed_required <= our_required:
        problems.append(f"{where}: does not require {sorted(seed_required - our_required)}")
    if request and not our_required <= seed_required:
        # A client built from the seed does not send what only we would require.
        problems.append(f"{where}: requires more than the seed: {our_required - seed_required}")
    if "items" in seed:
        problems += differences(
            document, ours.get("items", {}), seed["items"], f"{where}[]", request=request
        )
    if "additionalProperties" in seed and ours.get("additionalProperties") is False:
        problems.append(f"{where}: closed, the seed allows other properties")
    return problems


async def test_the_publish_operation_is_the_seeds_field_by_field(client):
    document = (await client.get("/schema/openapi.json")).json()
    seed = seed_operation()
    assert seed["method"] == "post" and seed["path"] == "/v1/messaging/campaigns/{id}/publish"
    assert seed["path_parameters"] == {"id": "string"}
    assert set(seed["responses"]) == {"202", "400", "404", "412", "500"}

    operation = document["paths"][seed["path"]][seed["method"]]

    path_parameters = {p["name"]: p for p in operation["parameters"] if p["in"] == "path"}
    assert set(path_parameters) == set(seed["path_parameters"])
    for name, kind in seed["path_parameters"].items():
        assert path_parameters[name]["required"] is True
        assert types_of(document, path_parameters[name]["schema"]) == {kind}
    (media,) = operation["requestBody"]["content"].items()
    assert media[0] == "application/json" and operation["requestBody"]["required"] is True
    problems = differences(document, media[1]["schema"], seed["request"], "request", request=False)
    problems += differences(document, media[1]["schema"], seed["request"], "request", request=True)
    for status, schema in seed["responses"].items():
        assert status in operation["responses"], f"{status} is not documented"
        (ours,) = operation["responses"][status]["content"].values()
        problems += differences(document, ours["schema"], schema, status, request=False)

    assert problems == []


def test_the_comparison_sees_a_difference():
    """The comparison above fails on what would break a client built from the seed."""
    document: dict[str, Any] = {"components": {"schemas": {}}}
    seed = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "n": {"type": "number"}},
        "required": ["a"],
    }
    same = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["a"],
    }
    richer = {**same, "properties": {**same["properties"], "b": {"type": "string"}}}
    renamed = {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}
    retyped = {**same, "properties": {"a": {"type": "integer"}, "n": {"type": "number"}}}
    optional = {**same, "required": []}
    stricter_request = {**same, "required": ["a", "n"]}

    assert differences(document, same, seed, "$", request=True) == []
    assert differences(document, richer, seed, "$", request=True) == []
    assert differences(document, renamed, seed, "$", request=False)
    assert differences(document, retyped, seed, "$", request=False)
    assert differences(document, optional, seed, "$", request=False)
    assert differences(document, stricter_request, seed, "$", request=True)
    assert differences(document, stricter_request, seed, "$", request=False) == []
