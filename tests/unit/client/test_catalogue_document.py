"""The client's catalogue (imgstore/client/catalogue.py, what the CLI knows) and the
server's ``/openapi.json`` say the same: every API of the catalogue is served at its
method and path, as a job when the catalogue says so, and every API the document names
(an action of a ``PUT .../actions`` table among them) is in the catalogue."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from imgstore.app import create_app
from imgstore.client import catalogue
from imgstore.config import Settings

PREFIX = "/zstack/v1"
API_NAME = re.compile(r"[A-Z][A-Za-z]+")


def _template(path: str) -> str:
    """A path with its variables unnamed: ZStack's SDK and imgstore name some differently."""
    return re.sub(r"\{\w+\}", "{}", path)


@pytest.fixture(scope="module")
def operations(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    """(METHOD, path template) → the document's operation; the app is made, not started."""
    app = create_app(Settings(data_dir=Path(tmp_path_factory.mktemp("doc"))))
    return {(method.upper(), _template(path)): op
            for path, ops in app.openapi()["paths"].items() for method, op in ops.items()}


def _action_keys(op: dict[str, Any]) -> list[str]:
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    return [choice["title"] for choice in schema.get("oneOf", [])]


def test_every_api_of_the_catalogue_is_served_as_it_says(operations: dict[tuple[str, str], dict[str, Any]]) -> None:
    problems = []
    for api in catalogue.APIS.values():
        op = operations.get((api.method, _template(PREFIX + api.path)))
        if op is None:
            problems.append(f"{api.name}: no {api.method} {api.path} in the document")
            continue
        if api.name not in API_NAME.findall(op.get("summary", "")):
            problems.append(f"{api.name}: the operation is {op.get('summary')!r}")
        if api.path.endswith("/actions") and api.body_key not in _action_keys(op):
            problems.append(f"{api.name}: {api.body_key} is not one of the actions {_action_keys(op)}")
        if api.is_async != ("202" in op["responses"]):
            problems.append(f"{api.name}: the catalogue says {'a job' if api.is_async else 'at once'}")
    assert not problems, "\n".join(problems)


def test_every_api_of_the_document_is_in_the_catalogue(operations: dict[tuple[str, str], dict[str, Any]]) -> None:
    missing = []
    for (method, path), op in operations.items():
        names = [n.strip().removesuffix(" by uuid") for n in str(op.get("summary", "")).split(",")]
        if not all(API_NAME.fullmatch(n) for n in names):
            continue  # not a ZStack API: a job poll, an upload or export URL, /metrics
        missing += [f"{name} ({method} {path})" for name in names if name not in catalogue.APIS]
        if path.endswith("/actions"):
            keys = {a.body_key for a in catalogue.APIS.values()
                    if (a.method, _template(PREFIX + a.path)) == (method, path)}
            missing += [f"action {k} ({method} {path})" for k in _action_keys(op) if k not in keys]
    assert not missing, "\n".join(missing)
