"""ZStack reply bodies: ``inventory``/``inventories`` and the ``schema`` map.

ZStack's SDKs decode inventories by the Java class names in ``schema``, parents before
children; without it a Java client loses every Ceph field.

Every query (every Query* API, GetTaskProgress) answers one way: :func:`rows_reply` reads
stored rows straight into the reply's dicts by a plan taken once per inventory class
from its pydantic fields (names, aliases, dates, nested inventories), and
:class:`JsonReply` encodes the body with orjson. It writes what
``Inventory.model_validate(row).model_dump(mode="json", by_alias=True)`` writes
(tests/unit/wire/test_wire.py holds them equal) at a tenth of the cost, and skips FastAPI's
``jsonable_encoder`` walk over a returned dict. A query reply always carries ``schema``
(ZStack sends it on every query).
"""
from __future__ import annotations

import functools
import operator
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, PlainSerializer
from pydantic_core import PydanticUndefined
from starlette.responses import Response

from imgstore.wire.dates import zstack_date
from imgstore.wire.inventories import Inventory


def schema_of(value: Any, path: str) -> list[tuple[str, str]]:
    """``(json path, class name)`` for every inventory in ``value``, parents first."""
    entries: list[tuple[str, str]] = []
    if isinstance(value, Inventory):
        if value.zstack_class:
            entries.append((path, value.zstack_class))
        for name, field in type(value).model_fields.items():
            alias = field.alias or name
            entries += schema_of(getattr(value, name), f"{path}.{alias}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            entries += schema_of(item, f"{path}[{i}]")
    return entries


def dump(model: BaseModel, fields: Sequence[str] = ()) -> dict[str, Any]:
    body = model.model_dump(mode="json", by_alias=True)
    if fields:
        body = {k: v for k, v in body.items() if k in fields}
    return body


def inventory_reply(inventory: Inventory, with_schema: bool, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inventory": dump(inventory), **extra}
    if with_schema:
        body["schema"] = dict(schema_of(inventory, "inventory"))
    return body


def _projected(schema: dict[str, str], fields: Sequence[str]) -> dict[str, str]:
    """The ``schema`` entries of what ``fields`` keeps (all of it without ``fields``)."""
    if not fields:
        return schema
    return {p: c for p, c in schema.items() if p.count(".") == 0 or p.split(".")[1].split("[")[0] in fields}


# ---------------------------------------------------------------- the query fast path


class JsonReply(Response):
    """A JSON body encoded by orjson: compact UTF-8, as FastAPI's JSONResponse writes it
    (non-finite floats become ``null``, as FastAPI makes them)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass(frozen=True)
class _Plan:
    """How to write rows of one class as inventories of one class: the fields the row
    class has are read by one ``attrgetter`` (in C), the others one by one with their
    defaults, as pydantic's ``from_attributes`` does."""

    zstack_class: str
    keys: tuple[str, ...]  # every field's wire name, in the model's order
    read: Callable[[Any], tuple[Any, ...]]  # values of the fields the row class has
    read_keys: tuple[str, ...]
    others: tuple[tuple[str, str, Any], ...]  # (key, attribute, default or PydanticUndefined)
    dates: tuple[str, ...]  # ZDate fields: ZStack's US date form
    lists: tuple[str, ...]  # plain list fields: copied
    nested: tuple[tuple[str, type[Inventory]], ...]  # lists of inventories of that class


@functools.cache
def _plan(cls: type[Inventory], row_class: type) -> _Plan:
    keys, read, others, dates, lists, nested = [], [], [], [], [], []
    for name, field in cls.model_fields.items():
        key = field.alias or name
        keys.append(key)
        if hasattr(row_class, name):
            read.append((key, name))
        else:
            others.append((key, name, field.get_default(call_default_factory=True)
                           if not field.is_required() else PydanticUndefined))
        args = typing.get_args(field.annotation)
        if typing.get_origin(field.annotation) is list and args and _is_inventory(args[0]):
            nested.append((key, args[0]))
        elif any(_is_inventory(a) for a in (field.annotation, *args)):
            raise TypeError(f"{cls.__name__}.{name}: only lists of inventories can be nested")
        elif typing.get_origin(field.annotation) is list:
            lists.append(key)
        if any(isinstance(m, PlainSerializer) and m.func is zstack_date for m in field.metadata):
            dates.append(key)
    getter = operator.attrgetter(*(name for _, name in read)) if read else (lambda _: ())
    if len(read) == 1:  # attrgetter of one name answers the value, not a tuple
        getter = (lambda one: lambda row: (one(row),))(getter)
    return _Plan(cls.zstack_class, tuple(keys), getter, tuple(k for k, _ in read), tuple(others),
                 tuple(dates), tuple(lists), tuple(nested))


def _is_inventory(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, Inventory)


def row_dict(
    cls: type[Inventory], row: Any, path: str = "", schema: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """The wire dict of ``row`` as an inventory of ``cls``; with ``schema``, also append
    the ``(json path, class name)`` entries of it and its nested inventories at ``path``."""
    plan = _plan(cls, type(row))
    if schema is not None and plan.zstack_class:
        schema.append((path, plan.zstack_class))
    out = dict(zip(plan.read_keys, plan.read(row), strict=True))
    if plan.others:
        for key, attr, default in plan.others:
            out[key] = getattr(row, attr) if default is PydanticUndefined else getattr(row, attr, default)
        out = {key: out[key] for key in plan.keys}
    for key in plan.dates:
        out[key] = zstack_date(out[key])
    for key in plan.lists:
        out[key] = list(out[key])
    for key, nested in plan.nested:
        at = f"{path}.{key}"
        out[key] = [row_dict(nested, item, f"{at}[{j}]", schema) for j, item in enumerate(out[key])]
    return out


def rows_reply(
    rows: Iterable[Any],
    inventory_class: Callable[[Any], type[Inventory]],
    total: int | None = None,
    fields: Sequence[str] = (),
    amend: Callable[[Any, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The reply of a query from stored rows, as the inventory models of
    ``[inventory_class(r).model_validate(r) for r in rows]`` would write it. ``amend(row, dict)`` may
    change a row's dict before ``fields`` projects it."""
    schema: list[tuple[str, str]] = []
    items = []
    for i, row in enumerate(rows):
        item = row_dict(inventory_class(row), row, f"inventories[{i}]", schema)
        if amend is not None:
            amend(row, item)
        if fields:
            item = {k: v for k, v in item.items() if k in fields}
        items.append(item)
    body: dict[str, Any] = {"inventories": items}
    if total is not None:
        body["total"] = total
    body["schema"] = _projected(dict(schema), fields)
    return body


def inventories_reply(
    inventories: Iterable[Inventory], total: int | None = None, fields: Sequence[str] = ()
) -> dict[str, Any]:
    """The reply of an API that builds its inventories itself (GetZone, GetTrash...): the
    same :func:`rows_reply`, reading the models' attributes as it reads a row's."""
    return rows_reply(inventories, type, total, fields)
