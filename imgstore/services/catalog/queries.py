"""Running a ZStack query: one way for every resource, without the ORM's object loading.

A page is read as plain rows (one SELECT of the entity's columns, then one SELECT per
collection the inventory nests, ``WHERE owner IN (<the page's keys>)``) into light
records: a class per entity with a slot per column and per collection, and the entity's
Python properties (``attached_zone_uuids``), so that ``api/envelope.rows_reply`` reads
them as it would read mapped objects. No identity map, no instrumented attributes, no
unit of work: a never-asked page of 20 costs a fraction of what loading 20 objects does.
Records are read-only snapshots; code that changes a resource loads it through the ORM.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict, defaultdict
from typing import Any

from sqlalchemy import Integer, bindparam, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from imgstore.db import query as q
from imgstore.errors import INVALID_ARGUMENT, ApiError
from imgstore.services.node.runtime import Runtime
from imgstore.wire.query import QuerySpec

# Paging with no condition (``?limit=20&start=N``, what consoles and SDK listings send)
# reuses one statement per resource, sort and shape, with the page's bounds as
# parameters: building a select and its cache key cost more than running it.
_PLAIN_PAGE = dataclasses.replace(
    QuerySpec(), start=bindparam("page_start", type_=Integer), limit=bindparam("page_limit", type_=Integer)
)
#: at most this many kept: ``fields=`` is the client's to vary, and each list is a key
MAX_PLAIN_STATEMENTS = 256
_plain: OrderedDict[tuple[Any, ...], tuple[q.Queryable, Select[Any], Select[Any] | None]] = OrderedDict()


async def run(rt: Runtime, queryable: q.Queryable, spec: QuerySpec) -> tuple[list[Any], int | None]:
    """The page of records a query asks for and, when it asks, the total; a query naming
    what the resource does not have is SYS.1007."""
    try:
        page, count, params = _statements(queryable, spec)
    except q.QueryFieldError as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None
    async with rt.db() as db:
        total = await db.scalar(count) if count is not None else None
        rows: list[Any] = []
        if not spec.count:
            shape = _shape(queryable.entity)
            rows = shape.read((await db.execute(page, params)).all())
            await _fill(db, shape, rows)
    return rows, total


def _statements(queryable: q.Queryable, spec: QuerySpec) -> tuple[Select[Any], Select[Any] | None, dict[str, int]]:
    """The page select (the entity's columns only) and the count select."""
    columns = _shape(queryable.entity).columns
    if spec.conditions:
        page, count = q.build_select(queryable, spec)
        return page.with_only_columns(*columns), count, {}
    key = (id(queryable), spec.sort, spec.fields, spec.count, spec.reply_with_count)
    cached = _plain.get(key)
    if cached is None or cached[0] is not queryable:
        shape = dataclasses.replace(_PLAIN_PAGE, sort=spec.sort, fields=spec.fields, count=spec.count,
                                    reply_with_count=spec.reply_with_count)
        page, count = q.build_select(queryable, shape)
        cached = _plain[key] = (queryable, page.with_only_columns(*columns), count)
        while len(_plain) > MAX_PLAIN_STATEMENTS:
            _plain.popitem(last=False)  # the least recently used
    else:
        _plain.move_to_end(key)
    return cached[1], cached[2], {"page_start": spec.start, "page_limit": spec.limit}


# ---------------------------------------------------------------- rows into records


@dataclasses.dataclass(frozen=True)
class _Collection:
    """A list an entity loads with it (``lazy="selectin"``): ``mons``, ``zone_refs``..."""

    key: str  # the owner's attribute
    owner_key: str  # the owner's attribute the children point to
    child_key: str  # the children's attribute holding it
    shape: _Shape
    select: Select[Any]  # the children of the owners bound as ``owners``


@dataclasses.dataclass(frozen=True)
class _Shape:
    """How one entity's rows become records."""

    record: type
    keys: tuple[str, ...]  # the record's attribute of each selected column, in order
    columns: tuple[Any, ...]
    collections: tuple[_Collection, ...]

    def read(self, rows: list[Any]) -> list[Any]:
        out = []
        for row in rows:
            record = self.record()
            for key, value in zip(self.keys, row, strict=True):
                setattr(record, key, value)
            out.append(record)
        return out


@functools.cache
def _shape(entity: type) -> _Shape:
    """The columns of ``entity`` and of its subclasses (one table: a query of a base class
    returns every kind), and the collections any of them loads."""
    mapper = inspect(entity)
    keys, columns = [], []
    for sub in mapper.self_and_descendants:
        for prop in sub.column_attrs:
            if prop.key in keys:
                continue
            keys.append(prop.key)
            # the entity's own attributes keep its single-table criteria (SystemTag: kind);
            # a subclass's column is read from the table, never filtering by the subclass
            columns.append(getattr(entity, prop.key) if sub is mapper else prop.columns[0].label(prop.key))
    collections = []
    for sub in mapper.self_and_descendants:
        for rel in sub.relationships:
            if rel.lazy == "selectin" and rel.key not in (c.key for c in collections):
                collections.append(_collection(sub, rel))
    slots = (*keys, *(c.key for c in collections))
    return _Shape(_record_class(entity, slots), tuple(keys), tuple(columns), tuple(collections))


def _collection(owner: Any, rel: Any) -> _Collection:
    [(local, remote)] = rel.local_remote_pairs
    child = rel.mapper.class_
    child_key = rel.mapper.get_property_by_column(remote).key
    order = rel.order_by or inspect(child).primary_key
    shape = _shape(child)
    statement = select(*shape.columns).where(
        getattr(child, child_key).in_(bindparam("owners", expanding=True))
    ).order_by(*order)
    return _Collection(rel.key, owner.get_property_by_column(local).key, child_key, shape, statement)


def _record_class(entity: type, slots: tuple[str, ...]) -> type:
    """A class with a slot per column and collection, and the Python properties of the
    entity and its subclasses (read the way the mapped object reads them)."""
    namespace: dict[str, Any] = {"__slots__": slots, "__doc__": f"A read-only row of {entity.__name__}."}
    for sub in inspect(entity).self_and_descendants:
        for klass in reversed(sub.class_.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, property) and name not in slots:
                    namespace[name] = value
    return type(f"{entity.__name__}Record", (), namespace)


async def _fill(db: AsyncSession, shape: _Shape, records: list[Any]) -> None:
    """Each record's collections, one SELECT per collection for the whole page."""
    for coll in shape.collections:
        owners = [getattr(r, coll.owner_key) for r in records]
        children = coll.shape.read((await db.execute(coll.select, {"owners": owners})).all()) if owners else []
        await _fill(db, coll.shape, children)
        by_owner: defaultdict[Any, list[Any]] = defaultdict(list)
        for child in children:
            by_owner[getattr(child, coll.child_key)].append(child)
        for record in records:
            setattr(record, coll.key, by_owner.get(getattr(record, coll.owner_key), []))
