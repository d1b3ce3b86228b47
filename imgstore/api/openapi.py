"""What ``/openapi.json`` says that FastAPI cannot read from the route signatures.

Several routes take ZStack's loose wire formats as they come: a query string of ``q=``
conditions, a ``{}`` or ``{"inventory": ...}`` reply built by hand. The helpers here
describe those in the document, and nothing else: they never change what a route
accepts or answers. (An action body, ``{"changeZoneState": {...}}``, is documented by its
action table: ``api/actions.py``.)

Each helper returns keyword arguments for a route decorator::

    @router.get("/zones", summary="QueryZone", **query_api(ZoneInventory))

Every API route also shares the error responses (:data:`ERROR_RESPONSES`, and
:data:`SESSION_ERRORS` where a session is needed), declared once on the routers in
``imgstore.app``: every failure is ZStack's ErrorCode body, never FastAPI's 422. And
every route that takes ``X-Job-UUID`` (``deps.api_call``) may answer 202: :func:`install`
adds that to the generated document, since a dependency cannot declare a response.
"""
from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar, get_args

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from imgstore.api.schemas import ChangeStateParams
from imgstore.db import query as q
from imgstore.db.query import Queryable
from imgstore.services.catalog import state_machine as state
from imgstore.wire.query import DEFAULT_LIMIT

T = TypeVar("T")
_JAVA_INT_MAX = 2**31 - 1

# ---------------------------------------------------------------- reply bodies (documentation only)


class ErrorCode(BaseModel):
    """ZStack's ErrorCode (``header/.../errorcode/ErrorCode.java``), as ``imgstore.errors`` writes it."""

    code: str = Field(description="e.g. SYS.1007, ID.1001, BS.1500")
    description: str = Field(description="the fixed text of the code")
    details: str = Field(description="what went wrong, for a human")
    elaboration: str | None = None
    opaque: dict[str, Any] | None = None
    cause: ErrorCode | None = None
    causes: list[ErrorCode] | None = None


class ErrorReply(BaseModel):
    """Every failure: ``{"error": ErrorCode}``; the HTTP status says what kind it was."""

    error: ErrorCode


class InventoryReply(BaseModel, Generic[T]):
    """A create, an action or a session: ``{"inventory": {...}}``."""

    model_config = ConfigDict(populate_by_name=True)
    inventory: T
    schema_: dict[str, str] | None = Field(
        default=None, alias="schema", description="json path → Java class; only with X-JSON-Schema: true"
    )


class QueryReply(BaseModel, Generic[T]):
    """A Query* API: ``{"inventories": [...], "schema": {...}}``, ``total`` when asked;
    only ``{"total": N}`` with ``count=true``; only the named keys with ``fields=``."""

    model_config = ConfigDict(populate_by_name=True)
    inventories: list[T] | None = None
    total: int | None = None
    schema_: dict[str, str] | None = Field(default=None, alias="schema", description="json path → Java class")


class EmptyReply(BaseModel):
    """``{}``: a delete, a log-out."""

    model_config = ConfigDict(extra="forbid")


class JobAccepted(BaseModel):
    """202 to an API run as a job (``X-Job-UUID`` or ``Prefer: respond-async``)."""

    location: str = Field(description="GET it (no session needed) until it answers other than 202")
    apiTimeout: int = Field(description="milliseconds")


class ValidateSessionReply(BaseModel):
    valid: bool


class GetImageQgaReply(BaseModel):
    enable: bool


class GetBackupStorageTypesReply(BaseModel):
    types: list[str]


class GetBackupStorageCapacityReply(BaseModel):
    totalCapacity: int
    availableCapacity: int
    success: bool


class ExportImageFromBackupStorageReply(BaseModel):
    imageUrl: str = Field(description="GET it, no session needed: its token is the credential")
    exportMd5Sum: str | None = None
    success: bool


class UploadJobDetail(BaseModel):
    longJobUuid: str | None = None
    longJobState: str
    imageUuid: str
    imageUploadUrl: str | None = Field(default=None, description="while the upload is pending")
    offset: int


class GetUploadImageJobDetailsReply(BaseModel):
    existingJobDetails: list[UploadJobDetail]


class UploadStatusReply(BaseModel):
    """Where the upload of an ``upload://`` image stands; ``inventory`` once it is complete."""

    imageUuid: str
    state: str
    offset: int = Field(description="bytes received so far: the next PUT starts here")
    size: int | None = None
    completed: bool
    inventory: dict[str, Any] | None = None


class ChangeStateDoc(ChangeStateParams):
    """``stateEvent`` as the document shows it; ``services.state`` checks it, in ZStack's words."""

    stateEvent: Literal["enable", "disable"]


assert set(get_args(ChangeStateDoc.model_fields["stateEvent"].annotation)) == set(state.EVENTS)

# ---------------------------------------------------------------- shared responses and parameters


_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorReply"}


def _error(description: str) -> dict[str, Any]:
    """An error response, its schema by reference (:func:`_document_errors` adds it to the
    document): with ``model``, FastAPI would make a pydantic field for each status of each
    route, under both prefixes, when the first request comes, and keep them all for the
    document alone."""
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


#: Every API route: its failures are ZStack ErrorCodes (and FastAPI's 422 is never sent).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("SYS.1007: a malformed request or an invalid argument"),
    404: _error("SYS.1003: no such resource; SYS.1008: no API at this path"),
    409: _error("SYS.1005/SYS.1006/BS.1001/BS.1002: refused in the resource's present state"),
    503: _error("the API ran and failed (ZStack's status for a failed API), e.g. BS.1500"),
    "default": _error("any other failure, as a ZStack ErrorCode"),
}

#: Routes behind ``Authorization: OAuth <session uuid>``.
SESSION_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("ID.1001: no session, or an invalid or expired one"),
}

#: ZStack's query string.
QUERY_PARAMETERS: list[dict[str, Any]] = [
    {"name": "q", "in": "query", "required": False, "style": "form", "explode": True,
     "description": "a condition `<field><op><value>` (ops `!=` `>=` `<=` `!?=` `!~=` `~=` `?=` `=` `>` `<`,"
                    " or `<field> is null` / `<field> not null`); repeat to AND several",
     "schema": {"type": "array", "items": {"type": "string"}}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": _JAVA_INT_MAX, "default": DEFAULT_LIMIT}},
    {"name": "start", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": _JAVA_INT_MAX, "default": 0}},
    {"name": "count", "in": "query", "required": False, "description": "`true`: only `{\"total\": N}`",
     "schema": {"type": "boolean", "default": False}},
    {"name": "replyWithCount", "in": "query", "required": False, "description": "`true`: add `total`",
     "schema": {"type": "boolean", "default": False}},
    {"name": "sort", "in": "query", "required": False, "description": "`+field` (ascending) or `-field`",
     "schema": {"type": "string"}},
    {"name": "fields", "in": "query", "required": False, "description": "comma-separated field names",
     "schema": {"type": "string"}},
]


def list_parameter(name: str, description: str) -> dict[str, Any]:
    """A list read by ``params.list_param``: ``k=a&k=b`` (``k.0=a`` works too)."""
    return {"name": name, "in": "query", "required": False, "style": "form", "explode": True,
            "description": description, "schema": {"type": "array", "items": {"type": "string"}}}


def bool_parameter(name: str, description: str) -> dict[str, Any]:
    """A boolean read by ``params.bool_param``: ``true`` or ``false``."""
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "boolean", "default": False}}


# ---------------------------------------------------------------- decorator keyword arguments


def query_api(queryable: Queryable, *inventories: type) -> dict[str, Any]:
    """A Query* route (``GET /<resources>``, ``GET /<resources>/{uuid}``) of ``queryable``:
    its conditions, ``sort`` and ``fields`` are spelled out as patterns of the names and
    values the server accepts (``db.query``), so that a generated client never sends a
    query the server refuses."""
    item: Any = inventories[0] if len(inventories) == 1 else inventories[0] | inventories[1]
    return {
        "response_model": None,
        "responses": {200: {"model": QueryReply[item]}},
        "openapi_extra": {"parameters": query_parameters(queryable)},
    }


def query_parameters(queryable: Queryable) -> list[dict[str, Any]]:
    """:data:`QUERY_PARAMETERS` with the patterns of ``queryable``."""
    patterns = {"sort": q.sort_pattern(queryable), "fields": q.fields_pattern(queryable)}
    out = []
    for param in QUERY_PARAMETERS:
        param = {**param, "schema": dict(param["schema"])}
        if param["name"] == "q":
            param["schema"]["items"] = {"type": "string", "pattern": q.condition_pattern(queryable)}
        elif param["name"] in patterns:
            param["schema"]["pattern"] = patterns[param["name"]]
        out.append(param)
    return out


def sync_api(reply: Any, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A synchronous route that builds its reply by hand."""
    extra = {"openapi_extra": {"parameters": parameters}} if parameters else {}
    return {"response_model": None, "responses": {200: {"model": reply}}, **extra}


def job_api(reply: Any, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An API that ZStack runs as a job: 200 with its reply (202 when asked for a job,
    which :func:`install` documents)."""
    extra = {"openapi_extra": {"parameters": parameters}} if parameters else {}
    return {"responses": {200: {"model": reply}}, **extra}


# ---------------------------------------------------------------- the generated document


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` say that every route taking ``X-Job-UUID`` may answer 202."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        doc = generate()  # FastAPI's, cached on the app: completed once, when first made
        if fresh:
            _document_errors(doc)
            _document_jobs(doc)
            _no_null_parameters(doc)
            _projected_inventories(doc)
            _no_nul(doc)
            _document_sessions(doc)
        return doc

    # FastAPI's documented way to extend the document is to replace the method
    app.openapi = document  # type: ignore[method-assign]


def _document_errors(doc: dict[str, Any]) -> None:
    """ErrorReply and what it nests, which the error responses refer to (:func:`_error`)."""
    schema = ErrorReply.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, nested in schema.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    schemas.setdefault("ErrorReply", schema)


def _document_sessions(doc: dict[str, Any]) -> None:
    """Every route that needs a session may answer 401 ID.1001, wherever its session check
    is declared (on its router, or on the route itself: RenewSession)."""
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            if op.get("security") and "401" not in op.get("responses", {}):
                op["responses"]["401"] = {
                    "description": SESSION_ERRORS[401]["description"],
                    "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


NO_NUL = "^[^\\x00]*$"


def _no_nul(doc: dict[str, Any]) -> None:
    """No string a body names, nor any of the path or the query, holds U+0000 (the models
    refuse it: ``schemas.RequestModel``; the query: ``deps.refuse_nul``): said on every
    string of the document that says nothing stricter. A key no model names may hold
    anything (``additionalProperties`` stays open): it is ignored."""

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(node):
            node["pattern"] = NO_NUL
        for key, value in node.items():
            if key not in ("properties", "example", "examples", "default"):
                walk(value)
            elif key == "properties":
                for prop in value.values():
                    walk(prop)

    walk(doc.get("paths", {}))
    walk(doc.setdefault("components", {}).setdefault("schemas", {}))


def _projected_inventories(doc: dict[str, Any]) -> None:
    """With ``fields=``, a query's inventories hold only the named keys: each
    ``QueryReply`` item may also be its inventory with no key required."""
    schemas = doc.get("components", {}).get("schemas", {})
    for name in [n for n in schemas if n.startswith("QueryReply_")]:
        for branch in schemas[name]["properties"]["inventories"].get("anyOf", []):
            if branch.get("type") != "array":
                continue
            items = branch["items"]
            refs = [r["$ref"] for r in items.get("anyOf", [items]) if "$ref" in r]
            partial = []
            for ref in refs:
                full = ref.rsplit("/", 1)[1]
                schemas.setdefault(f"{full}Fields", {
                    **{k: v for k, v in schemas[full].items() if k != "required"},
                    "title": f"{full}Fields", "description": f"{full} with `fields=`: only the named keys"})
                partial.append({"$ref": f"#/components/schemas/{full}Fields"})
            branch["items"] = {"anyOf": [*items.get("anyOf", [items]), *partial]}


def _no_null_parameters(doc: dict[str, Any]) -> None:
    """A header or a query parameter is a string or absent, never JSON's null: FastAPI
    writes ``anyOf [T, null]`` for an optional one, which tells a client that the text
    ``null`` is a valid value."""
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            for param in op.get("parameters", []):
                schema = param.get("schema", {})
                kept = [s for s in schema.get("anyOf", []) if s != {"type": "null"}]
                if "anyOf" in schema and len(kept) == 1:
                    rest = {k: v for k, v in schema.items() if k != "anyOf"}
                    param["schema"] = {**kept[0], **rest}


def _document_jobs(doc: dict[str, Any]) -> None:
    ref = "#/components/schemas/JobAccepted"
    accepted = {"description": "run as a job: poll `location`",
                "content": {"application/json": {"schema": {"$ref": ref}}}}
    used = False
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            if any(p.get("in") == "header" and p.get("name") == "X-Job-UUID" for p in op.get("parameters", [])):
                op.setdefault("responses", {}).setdefault("202", accepted)
                used = True
    if used:
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("JobAccepted", JobAccepted.model_json_schema(ref_template="#/components/schemas/{model}"))
