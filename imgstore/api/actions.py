"""``PUT .../{uuid}/actions``: one path, several ZStack APIs, told apart by the body's key.

ZStack's RestServer picks the API whose action name (``APIChangeBackupStorageStateMsg``
→ ``changeBackupStorageState``) is a key of the JSON body, and answers 400 "the body
doesn't contain action mapping to the URL[...]" when no key names one. A resource's
actions are an :data:`ActionTable`: action name → handler taking ``(call, uuid, params)``.
Adding an action is adding an entry.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from imgstore.api.deps import ApiCall
from imgstore.errors import INVALID_ARGUMENT, ApiError
from imgstore.services.catalog.tags import check_tags

ActionHandler = Callable[[ApiCall, str, dict[str, Any]], Awaitable[JSONResponse]]
ActionTable = dict[str, ActionHandler]

M = TypeVar("M", bound=BaseModel)


async def dispatch(
    table: ActionTable, call: ApiCall, uuid: str, body: dict[str, Any], url: str
) -> JSONResponse:
    """Run the one action the body names. Other top-level keys (``systemTags``,
    ``requestIp``...) are ignored, as ZStack ignores them."""
    named = [key for key in body if key in table]
    if not named:
        raise ApiError(
            INVALID_ARGUMENT,
            f"the body doesn't contain action mapping to the URL[{url}]; "
            f"valid actions are [{', '.join(table)}]",
        )
    if len(named) > 1:
        raise ApiError(
            INVALID_ARGUMENT,
            f"the body names more than one action [{', '.join(named)}] for the URL[{url}]; "
            "send one action per request",
        )
    action = named[0]
    params = body[action]
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError(INVALID_ARGUMENT, f"field[{action}] must be a JSON object")
    _check_tags(body, params)
    return await table[action](call, uuid, params)


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
            found[key] += tags
    check_tags(found["systemTags"], found["userTags"])


def parse_params(model: type[M], action: str, params: dict[str, Any]) -> M:
    """``params`` as ``model``; a bad field is the usual SYS.1007 naming ``action.field``."""
    try:
        return model.model_validate(params)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", action, *err["loc"])} for err in e.errors()]
        raise RequestValidationError(errors) from None

