"""Running a ZStack query: one way for every resource, without the ORM.

A page is read as plain rows (one SELECT of the entity's columns, then one SELECT per
collection the inventory nests, ``WHERE owner IN (<the page's keys>)``) into light
records: a class per entity with a slot per column and per collection, and the entity's
Python properties (``attached_zone_uuids``), so that ``api/envelope.rows_reply`` reads
them as it would read mapped objects. No identity map, no instrumented attributes, no
unit of work, no ORM execution: the statements are compiled once per shape of query
(``db/reads.py``) and the whole page, with its count and collections, is one reading on
the driver (one hop to SQLite's reading threads, one snapshot).
Records are read-only snapshots; code that changes a resource loads it through the ORM.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Generator
from typing import Any

from sqlalchemy import Integer, bindparam, inspect, select
from sqlalchemy.engine import Dialect

from imgstore.db import query as q
from imgstore.db.reads import Reading, Reads, Rows, Sql, compile_select
from imgstore.errors import INVALID_ARGUMENT, ApiError
from imgstore.services.node.runtime import Runtime
from imgstore.wire.query import QuerySpec

# Paging with no condition (``?limit=20&start=N``, what consoles and SDK listings send)
# reuses one compiled statement per resource, sort, shape and dialect, with the page's
# bounds as parameters (compiled with stand-ins, given at each run): building and
# compiling a select cost more than running it.
_PLAIN_PAGE = dataclasses.replace(
    QuerySpec(), start=bindparam("page_start", 0, type_=Integer), limit=bindparam("page_limit", 0, type_=Integer)
)
#: at most this many kept: ``fields=`` is the client's to vary, and each list is a key
MAX_PLAIN_STATEMENTS = 256
_plain: OrderedDict[tuple[Any, ...], tuple[q.Queryable, Sql, Sql | None]] = OrderedDict()
#: owners per SELECT of their collections; a page of more is read in several
MAX_OWNERS = 512

_Step = tuple[Sql, dict[str, Any]]


async def run(rt: Runtime, queryable: q.Queryable, spec: QuerySpec) -> tuple[list[Any], int | None]:
    """The page of records a query asks for and, when it asks, the total; a query naming
    what the resource does not have is SYS.1007."""
    try:
        page, count = _statements(queryable, spec, rt.reads)
    except q.QueryFieldError as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None
    shape = _shape(queryable.entity)
    return await rt.reads.run(_reading(shape, None if spec.count else page, count, rt.reads.dialect))


async def keys(rt: Runtime, queryable: q.Queryable, spec: QuerySpec, limit: int) -> list[Any]:
    """The key of each row the query matches, in its order, at most ``limit`` of them:
    what a kept list too long to keep whole holds (api/kept_pages.py)."""
    try:
        step = rt.reads.compiled(q.build_keys(queryable, spec, limit))
    except q.QueryFieldError as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None
    return await rt.reads.run(_first_column(step))


async def rows_of(rt: Runtime, queryable: q.Queryable, keys: list[Any], sort: tuple[str, bool] | None) -> list[Any]:
    """The records of ``keys``, in the query's order: a page of a kept list of keys. The
    select is compiled once per resource, sort and size of key list (a power of two, the
    last key repeated), as a plain page's is."""
    if not keys:
        return []
    size = 1 << (len(keys) - 1).bit_length()
    slot = ("keys", id(queryable), rt.reads.dialect, sort, size)
    cached = _plain.get(slot)
    if cached is None or cached[0] is not queryable:
        rows = q.build_rows_of(queryable, sort, size).with_only_columns(*_shape(queryable.entity).columns)
        cached = _plain[slot] = (queryable, compile_select(rows, rt.reads.dialect), None)
        while len(_plain) > MAX_PLAIN_STATEMENTS:
            _plain.popitem(last=False)
    else:
        _plain.move_to_end(slot)
    values = {f"key{i}": keys[min(i, len(keys) - 1)] for i in range(size)}
    records, _ = await rt.reads.run(_reading(_shape(queryable.entity), (cached[1], values), None, rt.reads.dialect))
    return records


def _first_column(step: _Step) -> Reading[list[Any]]:
    rows = yield step
    return [row[0] for row in rows]


def _statements(queryable: q.Queryable, spec: QuerySpec, reads: Reads) -> tuple[_Step, _Step | None]:
    """The page select (the entity's columns only) and the count select, with their values."""
    columns = _shape(queryable.entity).columns
    dialect = reads.dialect
    if spec.conditions:  # compiled once per shape of conditions (get by uuid, name=...)
        page, count = q.build_select(queryable, spec)
        return reads.compiled(page.with_only_columns(*columns)), reads.compiled(count) if count is not None else None
    key = (id(queryable), dialect, spec.sort, spec.fields, spec.count, spec.reply_with_count)
    cached = _plain.get(key)
    if cached is None or cached[0] is not queryable:
        shape = dataclasses.replace(_PLAIN_PAGE, sort=spec.sort, fields=spec.fields, count=spec.count,
                                    reply_with_count=spec.reply_with_count)
        page, count = q.build_select(queryable, shape)
        cached = _plain[key] = (queryable, compile_select(page.with_only_columns(*columns), dialect),
                                compile_select(count, dialect) if count is not None else None)
        while len(_plain) > MAX_PLAIN_STATEMENTS:
            _plain.popitem(last=False)  # the least recently used
    else:
        _plain.move_to_end(key)
    bounds = {"page_start": spec.start, "page_limit": spec.limit}
    return (cached[1], bounds), (cached[2], {}) if cached[2] is not None else None


def _reading(shape: _Shape, page: _Step | None, count: _Step | None,
             dialect: Dialect) -> Reading[tuple[list[Any], int | None]]:
    total = None
    if count is not None:
        total = (yield count)[0][0]
    records: list[Any] = []
    if page is not None:
        records = shape.read((yield page))
        yield from _fill(shape, records, dialect)
    return records, total


# ---------------------------------------------------------------- rows into records


@dataclasses.dataclass(frozen=True, eq=False)
class _Collection:
    """A list an entity loads with it (``lazy="selectin"``): ``mons``, ``zone_refs``..."""

    key: str  # the owner's attribute
    owner_key: str  # the owner's attribute the children point to
    child_key: str  # the children's attribute holding it
    shape: _Shape
    child_column: Any  # the children's column holding it
    order: tuple[Any, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class _Shape:
    """How one entity's rows become records."""

    record: type
    keys: tuple[str, ...]  # the record's attribute of each selected column, in order
    columns: tuple[Any, ...]
    collections: tuple[_Collection, ...]
    read: Callable[[Rows], list[Any]]  # rows into records


def _reader(record: type, keys: tuple[str, ...]) -> Callable[[Rows], list[Any]]:
    """Rows into records by one unpacking per row, ``r.uuid, r.name, ... = row``: a
    function written for these attributes (mapped names, identifiers), as ``dataclasses``
    writes its ``__init__``; a third of the cost of setting them one by one in a loop."""
    assert all(key.isidentifier() for key in keys)
    source = (
        "def read(rows):\n"
        "    out = []\n"
        "    for row in rows:\n"
        "        r = new(record)\n"
        f"        {', '.join(f'r.{key}' for key in keys)}, = row\n"
        "        out.append(r)\n"
        "    return out\n"
    )
    namespace: dict[str, Any] = {"new": object.__new__, "record": record}
    exec(source, namespace)
    read: Callable[[Rows], list[Any]] = namespace["read"]
    return read


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
    record = _record_class(entity, (*keys, *(c.key for c in collections)))
    return _Shape(record, tuple(keys), tuple(columns), tuple(collections), _reader(record, tuple(keys)))


def _collection(owner: Any, rel: Any) -> _Collection:
    [(local, remote)] = rel.local_remote_pairs
    child = rel.mapper.class_
    child_key = rel.mapper.get_property_by_column(remote).key
    order = rel.order_by or inspect(child).primary_key
    return _Collection(rel.key, owner.get_property_by_column(local).key, child_key, _shape(child),
                       getattr(child, child_key), tuple(order))


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


@functools.lru_cache(maxsize=512)
def _children_sql(coll: _Collection, dialect: Dialect, owners: int) -> Sql:
    """The children of ``owners`` owners (``owner0``...), compiled once per count: counts
    are powers of two (the last owner repeated), so a collection has a few statements."""
    statement = select(*coll.shape.columns).where(
        coll.child_column.in_([bindparam(f"owner{i}") for i in range(owners)])
    ).order_by(*coll.order)
    return compile_select(statement, dialect)


def _fill(shape: _Shape, records: list[Any], dialect: Dialect) -> Generator[_Step, Rows, None]:
    """Each record's collections, one SELECT per collection for the whole page (per
    :data:`MAX_OWNERS` records)."""
    for coll in shape.collections:
        owners = list(dict.fromkeys(getattr(r, coll.owner_key) for r in records))
        children: list[Any] = []
        for first in range(0, len(owners), MAX_OWNERS):
            chunk = owners[first:first + MAX_OWNERS]
            size = 1 << (len(chunk) - 1).bit_length()
            values = {f"owner{i}": chunk[min(i, len(chunk) - 1)] for i in range(size)}
            children += coll.shape.read((yield _children_sql(coll, dialect, size), values))
        yield from _fill(coll.shape, children, dialect)
        by_owner: defaultdict[Any, list[Any]] = defaultdict(list)
        for child in children:
            by_owner[getattr(child, coll.child_key)].append(child)
        for record in records:
            setattr(record, coll.key, by_owner.get(getattr(record, coll.owner_key), []))
