"""The TypeScript admin client (``frontend/src/admin-client.ts``) against the admin API's contract.

* Every request the client makes (method and path) is an operation of the OpenAPI document that
  ``pipesim schema --format openapi`` prints, and every operation of that document has a method in the
  client (so neither side can drift).
* The client's hand-written types (``Session``, ``Clock``, journal entries, request bodies) have the
  fields of the document's schemas, optional where a request may leave them out.
* ``tsc --noEmit`` type-checks ``frontend/src`` (the client against the generated protocol types), the
  example Playwright test and its config, with the TypeScript version ``frontend/package-lock.json`` pins.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import frontend_node_modules

from pipesim.cli import main as cli_main

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
CLIENT = FRONTEND / "src" / "admin-client.ts"
#: ``this.request("POST", `/__admin/sessions/${enc(id)}/start` ...``: the method and the path template.
REQUEST = re.compile(r"""this\.request(?:<[^(]*>)?\(\s*"(GET|POST|DELETE)",\s*["`](/__admin[^"`?]*)["`]""")
#: FastAPI serves its own document at this path; it is not an operation of the document itself.
OPENAPI_PATH = "/__admin/openapi.json"


def client_requests(source: str) -> set[tuple[str, str]]:
    """``(METHOD, /path/{})`` of every request in the client's source; parameters become ``{}``.

    >>> sorted(client_requests('this.request("GET", `/__admin/sessions/${enc(id)}`)'))
    [('GET', '/__admin/sessions/{}')]
    """
    return {(method, re.sub(r"\$\{[^}]*\}", "{}", path)) for method, path in REQUEST.findall(source)}


def _normalise(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if importlib.util.find_spec("pipesim.live.admin") is None:
        pytest.skip("pipesim.live.admin (the admin API) is not in this tree: nothing to compare the client with")
    out = tmp_path_factory.mktemp("openapi") / "openapi.json"
    assert cli_main(["schema", "--format", "openapi", "-o", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_the_client_is_read_as_it_is_written() -> None:
    found = client_requests(CLIENT.read_text(encoding="utf-8"))
    # One request per endpoint of the contract (read here, so a rewrite the pattern misses fails loudly).
    assert ("POST", "/__admin/clock/run-until") in found
    assert ("POST", "/__admin/sessions/{}/push") in found
    assert ("DELETE", "/__admin/journal") in found
    assert len(found) == 31, sorted(found)


def test_every_request_of_the_client_is_in_the_openapi_document(openapi: dict[str, Any]) -> None:
    documented = {(method.upper(), _normalise(path)) for path, item in openapi["paths"].items() for method in item
                  if method in ("get", "post", "delete", "put", "patch")}
    used = client_requests(CLIENT.read_text(encoding="utf-8"))
    assert used - documented <= {("GET", OPENAPI_PATH)}, f"not in the contract: {sorted(used - documented)}"
    assert documented - used == set(), f"no client method for: {sorted(documented - used)}"


#: The client's hand-written types and the OpenAPI schemas they mirror.
TYPES = {"Session": "Session", "Clock": "Clock", "Health": "Health", "CreateSessionOptions": "CreateSession",
         "Until": "Until", "ClockMove": "ClockMoved", "RunUntilResult": "RunUntilResult", "Fault": "FaultBody",
         "Push": "PushItem", "JournalEntry": "JournalEntry", "JournalPattern": "JournalQuery", "StubWhen": "StubWhen",
         "StubThen": "StubThen", "StubDefinition": "StubBody", "Stub": "StubAnswer", "ResetOptions": "ResetBody",
         "Recording": "Recording"}
REQUESTS = {"CreateSessionOptions", "Until", "Fault", "Push", "JournalPattern", "StubWhen", "StubThen",
            "StubDefinition", "ResetOptions"}


def interfaces(source: str) -> dict[str, dict[str, bool]]:
    r"""``{interface: {field: optional}}`` of every ``export interface`` in a TypeScript source.

    >>> interfaces('export interface A {\n  /** doc */\n  x: number;\n  "b.c"?: string;\n}\n')
    {'A': {'x': False, 'b.c': True}}
    """
    out = {}
    for name, body in re.findall(r"^export interface (\w+)[^{]*\{\n(.*?)^\}", source, re.M | re.S):
        out[name] = {field.strip('"'): bool(optional)
                     for field, optional in re.findall(r'^  ("[^"]+"|\w+)(\?)?:', body, re.M)}
    return out


def test_the_clients_types_have_the_fields_of_the_contract(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    ours = interfaces(CLIENT.read_text(encoding="utf-8"))
    for name, theirs in TYPES.items():
        schema = schemas[theirs]
        if name in REQUESTS:  # what may be left out of a request body is optional on both sides
            fields = {field: field not in schema.get("required", []) for field in schema["properties"]}
        else:  # an answer always has every field (one with a default is not "required" in the schema)
            fields = dict.fromkeys(schema["properties"], False)
        assert ours[name] == fields, f"{name} (OpenAPI {theirs}): ours {ours[name]}, the contract's {fields}"


def test_typescript_compiles() -> None:
    modules = frontend_node_modules(".bin/tsc", "@playwright/test", "@types/node")
    proc = subprocess.run([str(modules / ".bin" / "tsc"), "--noEmit", "-p", str(FRONTEND)], cwd=FRONTEND,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"tsc --noEmit failed:\n{proc.stdout}\n{proc.stderr}"
