"""schemas/openapi.json is a valid OpenAPI 3.1 document (generators and schemathesis read it)."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate
from openapi_spec_validator.versions.shortcuts import get_spec_version

OPENAPI = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"


def test_openapi_document_is_valid_3_1() -> None:
    document = json.loads(OPENAPI.read_text())
    assert str(get_spec_version(document)).endswith("3.1")
    validate(document)


def test_openapi_declares_what_the_server_accepts() -> None:
    paths = json.loads(OPENAPI.read_text())["paths"]
    (limit,) = [p for p in paths["/api/jobs"]["get"]["parameters"] if p["name"] == "limit"]
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    for path, name in (("/api/status/{job_id}", "job_id"), ("/api/runs/{run_id}", "run_id")):
        (param,) = paths[path]["get"]["parameters"]
        assert param["name"] == name
        assert param["schema"]["pattern"] == "^[0-9]{1,18}$"
    assert set(paths["/api/health"]["get"]["responses"]) == {"200", "503"}
