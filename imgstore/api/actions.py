"""``PUT .../{uuid}/actions``: one path, several ZStack APIs, told apart by the body's key.

ZStack's RestServer picks the API whose action name (``APIChangeBackupStorageStateMsg``
→ ``changeBackupStorageState``) is a key of the JSON body, and answers 400 "the body
doesn't contain action mapping to the URL[...]" when no key names one.

A resource's actions are an :class:`ActionTable` of :class:`Action` entries, each saying
its API, its request model, what it runs and how (a job when asked, or always). The
route, its dispatch and its part of ``/openapi.json`` are all made from the table
(:meth:`ActionTable.route`), so the document cannot drift from what is served: adding
an action is adding an entry.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from imgstore.api.deps import ApiCall, api_call
from imgstore.api.fields import TAG
from imgstore.api.openapi import job_api
from imgstore.api.schemas import NUL_MESSAGE, Params, holds_nul
from imgstore.crypto import new_uuid
from imgstore.errors import INVALID_ARGUMENT, ApiError
from imgstore.services.catalog.tags import check_tags

M = TypeVar("M", bound=BaseModel)

#: what an action does once its params are parsed: ``(call, uuid, params)`` → the reply
#: body; it runs as the job's work (or at once, when no job is asked for)
Run = Callable[[ApiCall, str, Any], Awaitable[dict[str, Any]]]

#: how an action runs. ``asked``: as a job when the request asks for one (``X-Job-UUID``,
#: ``Prefer: respond-async``), else answered at once, as ZStack does; ``tracked``: the
#: same, but always under a job uuid (``call.job_uuid``), which GetTaskProgress follows;
#: ``job``: always a job (202), as a long read of a whole image is
RunAs = Literal["asked", "tracked", "job"]


@dataclass(frozen=True)
class Action:
    """One ZStack API served under ``PUT .../actions``."""

    api: str  # ZStack's API name ("UpdateZone"): the job's name and, first letter lowered, the body key
    model: type[Params]  # the params under the body key, parsed before anything runs (SYS.1007 at once)
    run: Run
    run_as: RunAs = "asked"
    doc: type[BaseModel] | None = None  # what the document shows, when it says more than ``model``
    check: Callable[[Any], object] | None = None  # more checks of the parsed params, before the job

    @property
    def key(self) -> str:
        """The body key: ZStack's action name (the message class without ``API``/``Msg``,
        its first letter lowered)."""
        return self.api[:1].lower() + self.api[1:]


class ActionTable:
    """The actions of one ``PUT .../{uuid}/actions`` path, by body key."""

    def __init__(self, *actions: Action) -> None:
        self.actions = {action.key: action for action in actions}
        if len(self.actions) != len(actions):
            raise ValueError("two actions of one table share a body key")

    @property
    def summary(self) -> str:
        return ", ".join(action.api for action in self.actions.values())

    async def dispatch(self, call: ApiCall, uuid: str, body: dict[str, Any], url: str) -> JSONResponse:
        """Run the one action the body names. Other top-level keys (``systemTags``,
        ``requestIp``...) are ignored, as ZStack ignores them."""
        named = [key for key in body if key in self.actions]
        if not named:
            raise ApiError(
                INVALID_ARGUMENT,
                f"the body doesn't contain action mapping to the URL[{url}]; "
                f"valid actions are [{', '.join(self.actions)}]",
            )
        if len(named) > 1:
            raise ApiError(
                INVALID_ARGUMENT,
                f"the body names more than one action [{', '.join(named)}] for the URL[{url}]; "
                "send one action per request",
            )
        action = self.actions[named[0]]
        params = body[action.key]
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ApiError(INVALID_ARGUMENT, f"field[{action.key}] must be a JSON object")
        _check_tags(body, params)
        parsed = parse_params(action.model, action.key, params)
        if action.check is not None:
            action.check(parsed)
        if action.run_as != "asked":
            call = dataclasses.replace(call, job_uuid=call.job_uuid or new_uuid(),
                                       asynchronous=call.asynchronous or action.run_as == "job")

        async def work() -> dict[str, Any]:
            return await action.run(call, uuid, parsed)

        return await call.run(action.api, work)

    def route(self, router: APIRouter, path: str, reply: Any, *, name: str) -> None:
        """Serve the table at ``PUT path``, whose one path parameter names the resource;
        ``name`` is the route's (it makes the document's operationId)."""
        [param] = re.findall(r"{(\w+)}", path)

        async def endpoint(request: Request, body: dict[str, Any], call: ApiCall, **path_params: str) -> JSONResponse:
            return await self.dispatch(call, path_params[param], body, request.url.path)

        kind = inspect.Parameter.KEYWORD_ONLY
        endpoint.__signature__ = inspect.Signature([  # type: ignore[attr-defined]  # FastAPI reads it
            inspect.Parameter(param, kind, annotation=str),
            inspect.Parameter("request", kind, annotation=Request),
            inspect.Parameter("body", kind, annotation=dict[str, Any], default=Body()),
            inspect.Parameter("call", kind, annotation=ApiCall, default=Depends(api_call)),
        ], return_annotation=JSONResponse)
        router.put(path, summary=self.summary, name=name, **self._document(reply))(endpoint)

    def _document(self, reply: Any) -> dict[str, Any]:
        """The route's keywords for the document: the body is one of ``{"<action>": {...}}``."""
        choices = [_action_schema(a.key, a.doc or a.model, [k for k in self.actions if k != a.key])
                   for a in self.actions.values()]
        body = {"required": True, "content": {"application/json": {"schema": {"oneOf": choices}}}}
        return {**job_api(reply), "openapi_extra": {"requestBody": body}}


def _action_schema(action: str, model: type[BaseModel], others: list[str]) -> dict[str, Any]:
    params = model.model_json_schema(ref_template="#/components/schemas/{model}")
    if "$defs" in params:
        raise ValueError(f"{model.__name__}: nested models cannot be inlined in an action body")
    if not params.get("required"):  # ``{"<action>": null}`` is ``{}`` (dispatch)
        params = {"anyOf": [params, {"type": "null"}]}
    tags = {"anyOf": [{"type": "array", "items": TAG}, {"type": "null"}]}
    # other keys are ignored, as ZStack ignores them, but not the key of another action:
    # dispatch refuses a body naming two, whatever the other's value
    schema: dict[str, Any] = {
        "title": action,
        "type": "object",
        "properties": {action: params, "systemTags": tags, "userTags": tags},
        "required": [action],
    }
    if others:
        schema["not"] = {"anyOf": [{"required": [key]} for key in others]}
    return schema


def _check_tags(body: dict[str, Any], params: dict[str, Any]) -> None:
    """Tags beside an action, at the top or in its params, are checked as a create's are
    (the document says so of every body), though no action applies them."""
    found: dict[str, list[str]] = {"systemTags": [], "userTags": []}
    for where in (body, params):
        for key in found:
            tags = where.get(key)
            if tags is None:
                continue
            if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                raise ApiError(INVALID_ARGUMENT, f"field[{key}] must be a list of strings")
            if holds_nul(tags):
                raise ApiError(INVALID_ARGUMENT, NUL_MESSAGE.format(field=key))
            found[key] += tags
    check_tags(found["systemTags"], found["userTags"])


def parse_params(model: type[M], action: str, params: dict[str, Any]) -> M:
    """``params`` as ``model``; a bad field is the usual SYS.1007 naming ``action.field``."""
    try:
        return model.model_validate(params)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", action, *err["loc"])} for err in e.errors()]
        raise RequestValidationError(errors) from None
