"""ZStack reply bodies: ``inventory``/``inventories`` and the ``schema`` map.

ZStack's SDKs decode inventories by the Java class names in ``schema``, parents before
children (zstack-sdk-wire.md 6.3); without it a Java client loses every Ceph field.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from imgstore.api.schemas import Inventory


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


def inventories_reply(
    inventories: Iterable[Inventory], total: int | None = None, fields: Sequence[str] = ()
) -> dict[str, Any]:
    """A query reply: always with ``schema`` (ZStack sends it on every query)."""
    items = list(inventories)
    body: dict[str, Any] = {"inventories": [dump(i, fields) for i in items]}
    if total is not None:
        body["total"] = total
    schema = dict(schema_of(items, "inventories"))
    if fields:
        schema = {p: c for p, c in schema.items() if p.count(".") == 0 or p.split(".")[1].split("[")[0] in fields}
    body["schema"] = schema
    return body
