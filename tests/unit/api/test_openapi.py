"""api/openapi.py: the error responses every route shares."""
from __future__ import annotations

from pathlib import Path

import pytest

from imgstore.api.openapi import ERROR_RESPONSES, SESSION_ERRORS
from imgstore.app import create_app
from imgstore.config import Settings


def test_the_shared_error_responses_name_no_model() -> None:
    """FastAPI makes a pydantic field of every response ``model`` of every route (the
    shared ones under both prefixes) when the first request comes, and keeps them for the
    document alone: the shared errors refer to ErrorReply's schema instead."""
    for status, response in {**ERROR_RESPONSES, **SESSION_ERRORS}.items():
        assert "model" not in response, status


def test_every_error_response_refers_to_error_reply_in_the_document(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSTORE_DATA_DIR", str(tmp_path))
    app = create_app(Settings())
    doc = app.openapi()
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorReply"]["properties"]["error"]["$ref"] == "#/components/schemas/ErrorCode"
    assert "code" in schemas["ErrorCode"]["properties"]
    assert len(doc["paths"]) > 20
    checked = 0
    for ops in doc["paths"].values():
        for op in ops.values():
            for status in ("400", "401", "404", "409", "503", "default"):
                if status in op["responses"]:
                    content = op["responses"][status]["content"]["application/json"]
                    assert content["schema"] == {"$ref": "#/components/schemas/ErrorReply"}, (op["operationId"], status)
                    checked += 1
    assert checked > 100
