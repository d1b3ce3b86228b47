"""A :class:`~imgstore.wire.query.QuerySpec` → SQLAlchemy selects, with ZStack's semantics.

Each resource describes itself once as a :class:`Queryable`: which inventory field is
which SQL expression (and of what type), which fields are lists kept in another table,
which dotted names lead to related resources, and where its tags live.
:func:`build_select` turns a parsed query into a page select and a count select that
run unchanged on SQLite and PostgreSQL.

Semantics, chosen to match ZStack on MySQL:

* comparisons are typed: a value that does not fit the field is an error naming both;
* ``~=``/``!~=`` are case-insensitive (MySQL's default collation) with ``%``/``_``
  wildcards and ``\\`` as escape on both engines;
* ``!=``, ``!?=``, ``!~=`` on a NULL column do not match (SQL three-valued logic, as MySQL);
* a list field or a tag matches when *some* member satisfies a positive operator; the
  negative ones (``!=``, ``!?=``, ``!~=``, ``is null``) mean *no* member satisfies the
  positive twin, so ``attachedZoneUuids is null`` is "attached nowhere" — ZStack's
  ``TagSubQueryExtension`` does exactly this;
* a related resource (``zone.name=x``) matches when some related row satisfies the
  condition as written;
* ordering always ends with the primary key, so paging is deterministic.

Zone-less dates (``Jun 7, 2017 9:20:17 PM``, ISO without offset) are read in the server's
local zone, which is how ``imgstore.wire.dates`` writes them; naive ``DateTime`` columns are
taken to hold UTC.
"""
from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from dataclasses import field as _dc_field
from datetime import UTC, datetime
from typing import Any

from pydantic.alias_generators import to_camel
from sqlalchemy import DateTime, String, bindparam, cast, func, inspect, literal, select
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.sqltypes import BOOLEANTYPE
from sqlalchemy.sql.visitors import InternalTraversal

from imgstore.wire.dates import parse_us_date
from imgstore.wire.query import Condition, QuerySpec

Clause = ColumnElement[bool]
#: fn(rest of the dotted name, condition) -> where-clause on the owning entity.
Relation = Callable[[str, Condition], Clause]
#: fn("systemTag" | "userTag", condition) -> where-clause on the owning entity.
TagFilter = Callable[[str, Condition], Clause]

TAG_NAMES = {"__systemTag__": "systemTag", "__userTag__": "userTag"}
_POSITIVE_TWIN = {"!=": "=", "!?=": "?=", "!~=": "~=", "is null": "not null"}
_COMPARE: dict[str, Callable[[Any, Any], Clause]] = {
    "=": lambda col, v: col == v,
    "!=": lambda col, v: col != v,
    ">": lambda col, v: col > v,
    ">=": lambda col, v: col >= v,
    "<": lambda col, v: col < v,
    "<=": lambda col, v: col <= v,
}


class QueryFieldError(ValueError):
    """A query that parses but does not fit the resource: the message is for the user."""


class UnknownFieldError(QueryFieldError):
    """A condition, ``sort`` or ``fields`` names something the inventory does not have."""


class FieldValueError(QueryFieldError):
    """A condition's value cannot be read as the field's type."""


@dataclass(frozen=True)
class Field:
    """An inventory field backed by one SQL expression; ``kind`` types its values."""

    column: Any  # ColumnElement or ORM attribute
    kind: type = str


def columns(entity: type, *attributes: str) -> dict[str, Field]:
    """A field for each column attribute of ``entity``, named as ZStack names it: the
    camelCase of the attribute (``ssh_port`` → ``sshPort``), the rule the inventories'
    aliases follow; its ``kind`` is the column's own type, so the two cannot disagree."""
    fields = {}
    for attribute in attributes:
        column = getattr(entity, attribute)
        fields[to_camel(attribute)] = Field(column, column.type.python_type)
    return fields


@dataclass(frozen=True)
class ListField:
    """A list-valued inventory field kept in another table (e.g. ``attachedZoneUuids``).

    ``select_for()`` returns a select of ``(owner primary key, member value)`` rows; it is
    a callable so that a module can declare its queryables before its mappers are ready.
    """

    select_for: Callable[[], Select[Any]]
    kind: type = str


@dataclass(frozen=True)
class Queryable:
    """How one resource answers ZStack queries; declared once, next to its routes."""

    entity: type
    fields: Mapping[str, Field | ListField]
    relations: Mapping[str, Relation] = _dc_field(default_factory=dict)
    tags: TagFilter | None = None
    default_sort: str | None = None  # an inventory field; the primary key always follows
    name: str | None = None  # for messages, e.g. "BackupStorageInventory"

    @property
    def label(self) -> str:
        return self.name or self.entity.__name__


def build_select(q: Queryable, spec: QuerySpec) -> tuple[Select[Any], Select[Any] | None]:
    """The page of entities the query asks for, and the count select when it wants a total.

    The count ignores ``start``/``limit``; it is ``None`` unless ``count`` or
    ``replyWithCount`` is set. ``fields`` is only validated: projection is the caller's."""
    for name in spec.fields:
        _field(q, name)
    clauses = [where_clause(q, cond) for cond in spec.conditions]
    matching = select(q.entity).where(*clauses)
    order = _order_by(q, spec.sort)
    keys = _primary_key(q)
    if spec.limit is None or len(keys) != 1:
        page = matching.order_by(*order).offset(spec.start).limit(spec.limit)
    else:
        # the page's keys first, then its rows: an OFFSET skips index entries, not rows
        # (an index-only scan of (createDate, uuid) on PostgreSQL)
        key = getattr(q.entity, inspect(q.entity).get_property_by_column(keys[0]).key)
        picked = select(key).where(*clauses).order_by(*order).offset(spec.start).limit(spec.limit)
        page = select(q.entity).where(key.in_(picked)).order_by(*order)
    if not (spec.count or spec.reply_with_count):
        return page, None
    return page, select(func.count()).select_from(matching.subquery())


def build_keys(q: Queryable, spec: QuerySpec, limit: int) -> Select[Any]:
    """The primary key of each row ``spec``'s conditions match, in its order, at most ``limit``."""
    clauses = [where_clause(q, cond) for cond in spec.conditions]
    return select(*_primary_key(q)).where(*clauses).order_by(*_order_by(q, spec.sort)).limit(limit)


def build_rows_of(q: Queryable, sort: tuple[str, bool] | None, keys: int) -> Select[Any]:
    """The rows whose primary key is one of ``keys`` parameters (``key0``...), in ``sort``'s order."""
    chosen = _primary_key(q)[0].in_([bindparam(f"key{i}") for i in range(keys)])
    return select(q.entity).where(chosen).order_by(*_order_by(q, sort))


def where_clause(q: Queryable, cond: Condition) -> Clause:
    """One condition as a where-clause on ``q.entity``: field, list, tag or relation."""
    target = q.fields.get(cond.name)
    if isinstance(target, Field):
        return compare(target.column, target.kind, cond)
    if isinstance(target, ListField):
        return membership(_primary_key(q)[0], target.select_for(), cond, target.kind)
    if cond.name in TAG_NAMES and q.tags is not None:
        return q.tags(TAG_NAMES[cond.name], cond)
    head, dot, rest = cond.name.partition(".")
    if dot and rest and head in q.relations:
        return q.relations[head](rest, cond)
    raise _unknown(q, cond.name)


def compare(column: Any, kind: type, cond: Condition) -> Clause:
    """``column <op> value`` with the value converted to ``kind``."""
    if cond.op == "is null":
        return column.is_(None)
    if cond.op == "not null":
        return column.is_not(None)
    raw = cond.value or ""
    if cond.op in ("~=", "!~="):
        text = column if kind is str else cast(column, String)
        return CaseInsensitiveLike(text, raw, negate=cond.op == "!~=")
    if cond.op in ("?=", "!?="):
        values = [convert(kind, v, cond.name, column) for v in cond.values]
        return column.in_(values) if cond.op == "?=" else column.not_in(values)
    if kind is bool and cond.op not in ("=", "!="):  # true and false have no order
        raise FieldValueError(f"field[{cond.name}] is a boolean: {cond.op} does not apply to it")
    return _COMPARE[cond.op](column, convert(kind, raw, cond.name, column))


class CaseInsensitiveLike(ColumnElement[bool]):
    """``column ILIKE pattern ESCAPE '\\'`` (or ``NOT``), written so that an index can serve
    a prefix pattern (``name~=bs-00%``):

    * SQLite: ``column LIKE pattern``. Its LIKE ignores ASCII case, exactly as its
      ``lower()`` does (ASCII only), and it walks an index on ``column COLLATE NOCASE``;
    * PostgreSQL: ``lower(column) LIKE lower(pattern)``, which is how PostgreSQL runs
      ILIKE in a UTF-8 database, and it walks an index on ``lower(column)
      text_pattern_ops``;
    * others: ILIKE as SQLAlchemy writes it.
    """

    inherit_cache = True
    type = BOOLEANTYPE
    _is_implicitly_boolean = True  # a comparison: written as is in a WHERE, never "(...) = 1"
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_clauseelement),
        ("negate", InternalTraversal.dp_boolean),
    ]

    def __init__(self, column: Any, pattern: str, negate: bool = False) -> None:
        self.column = column
        self.pattern = literal(pattern, String)
        self.negate = negate


@compiles(CaseInsensitiveLike)
def _ilike(e: CaseInsensitiveLike, compiler: Any, **kw: Any) -> str:
    clause = e.column.not_ilike(e.pattern, escape="\\") if e.negate else e.column.ilike(e.pattern, escape="\\")
    return compiler.process(clause, **kw)


@compiles(CaseInsensitiveLike, "sqlite")
def _ilike_sqlite(e: CaseInsensitiveLike, compiler: Any, **kw: Any) -> str:
    clause = e.column.not_like(e.pattern, escape="\\") if e.negate else e.column.like(e.pattern, escape="\\")
    return compiler.process(clause, **kw)


@compiles(CaseInsensitiveLike, "postgresql")
def _ilike_postgresql(e: CaseInsensitiveLike, compiler: Any, **kw: Any) -> str:
    column, pattern = func.lower(e.column), func.lower(e.pattern)
    clause = column.not_like(pattern, escape="\\") if e.negate else column.like(pattern, escape="\\")
    return compiler.process(clause, **kw)


def membership(owner_key: Any, rows: Select[Any], cond: Condition, kind: type = str) -> Clause:
    """Match owners by the members of a list: some member fits, or (negative ops) none does.

    ``rows`` yields ``(owner key, member value)``. ``x!=v`` becomes "no member equals v",
    ``x is null`` "no member at all", mirroring ZStack's tag and list sub-queries.
    """
    sub = rows.subquery()
    owner, value = list(sub.c)[:2]
    positive = _POSITIVE_TWIN.get(cond.op)
    test = compare(value, kind, replace(cond, op=positive) if positive else cond)
    owners = select(owner).where(owner.is_not(None), test)
    return owner_key.not_in(owners) if positive else owner_key.in_(owners)


def relation(owner_key: Any, link: Callable[[], Select[Any]],
             target: Queryable | Callable[[], Queryable]) -> Relation:
    """A :data:`Relation` for ``<name>.<field>`` conditions on another queryable resource.

    ``link()`` yields ``(owner key, target primary key)`` rows: a ref table for
    many-to-many (``select(Ref.backup_storage_uuid, Ref.zone_uuid)``), or the child table
    itself for one-to-many (``select(CephMon.backup_storage_uuid, CephMon.uuid)``).
    The owner matches when some linked target satisfies the condition. ``target`` may
    be a function that returns it, for two resources that name each other (zones and
    storages): it is asked when a query or the document needs it.
    """

    def clause(rest: str, cond: Condition) -> Clause:
        resolved = related(clause)
        matched = select(_primary_key(resolved)[0]).where(
            where_clause(resolved, replace(cond, name=rest))
        )
        sub = link().subquery()
        owner, target_key = list(sub.c)[:2]
        return owner_key.in_(select(owner).where(target_key.in_(matched)))

    clause.target = target  # type: ignore[attr-defined]  # read by related()
    return clause


def related(clause: Relation) -> Queryable:
    """The resource a :func:`relation` leads to."""
    target = clause.target  # type: ignore[attr-defined]  # set by relation()
    return target if isinstance(target, Queryable) else target()


def tag_filter(owner_key: Any, rows_for: Callable[[str], Select[Any]]) -> TagFilter:
    """A :data:`TagFilter` from ``rows_for("systemTag" | "userTag")`` → ``(owner, tag)`` rows."""

    def clause(kind: str, cond: Condition) -> Clause:
        return membership(owner_key, rows_for(kind), cond)

    return clause


def convert(kind: type, raw: str, name: str, column: Any = None) -> Any:
    """Read a condition value as ``kind``, or raise :class:`FieldValueError` naming it."""
    if kind is str:
        return raw
    text = raw.strip()
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return _enum_value(kind, text, raw, name, column)
    reader = _READERS.get(kind)
    if reader is None:
        raise TypeError(f"unsupported query field kind {kind!r} for field[{name}]")
    value = reader(text)
    if value is None:
        raise FieldValueError(f"value[{raw}] of field[{name}] is not a valid {_KIND_NAMES[kind]}")
    if kind is datetime:
        return _for_column(value, column)
    return value


def parse_datetime(text: str) -> datetime | None:
    """An aware datetime from ISO 8601, epoch milliseconds or ZStack's US form, else None.

    Zone-less forms are local time: imgstore (like ZStack) prints dates in the server's
    local zone without an offset, so a client echoing one back means that zone.
    """
    if re.fullmatch(r"-?[0-9]+", text):
        try:
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    parsed = parse_us_date(text) or _parse_iso(text)
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()


# --- helpers ---------------------------------------------------------------------------

def _parse_iso(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _for_column(value: datetime, column: Any) -> datetime:
    """Naive UTC for naive ``DateTime`` columns (what imgstore stores), aware otherwise."""
    col_type = getattr(column, "type", None)
    if isinstance(col_type, DateTime) and not col_type.timezone:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _read_int(text: str) -> int | None:
    """At most 19 ASCII digits, within a signed 64-bit column: int() of 4300+ digits
    raises, and a bigger value overflows the database's bind (both were 500s)."""
    if not re.fullmatch(r"[+-]?[0-9]{1,19}", text):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def _read_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_bool(text: str) -> bool | None:
    return {"true": True, "false": False}.get(text.lower())


_READERS: dict[type, Callable[[str], Any]] = {
    int: _read_int, float: _read_float, bool: _read_bool, datetime: parse_datetime,
}
_KIND_NAMES = {
    int: "integer",
    float: "number",
    bool: "boolean (true or false)",
    datetime: "date (ISO 8601, epoch milliseconds or 'Jun 7, 2017 9:20:17 PM')",
}


def _enum_value(kind: type[enum.Enum], text: str, raw: str, name: str, column: Any) -> Any:
    """The member named or valued ``text``; SQL Enum columns take members, others values."""
    member = next((m for m in kind if str(m.value) == text or m.name == text), None)
    if member is None:
        valid = ", ".join(str(m.value) for m in kind)
        raise FieldValueError(
            f"value[{raw}] of field[{name}] is not a valid value; valid values are [{valid}]"
        )
    return member if isinstance(getattr(column, "type", None), SqlEnum) else member.value


def _primary_key(q: Queryable) -> tuple[Any, ...]:
    return tuple(inspect(q.entity).primary_key)


def _field(q: Queryable, name: str) -> Field | ListField:
    if name not in q.fields:
        raise _unknown(q, name)
    return q.fields[name]


def _order_by(q: Queryable, sort: tuple[str, bool] | None) -> list[Any]:
    """The requested (or default) order, NULLs first ascending as on MySQL, then the key."""
    if sort is None and q.default_sort is not None:
        sort = (q.default_sort, True)
    order: list[Any] = []
    if sort is not None:
        name, ascending = sort
        target = _field(q, name)
        if not isinstance(target, Field):
            raise UnknownFieldError(
                f"field[{name}] of {q.label} is a list and cannot be used to sort"
            )
        col = target.column
        if _nullable(col):
            order.append(col.asc().nulls_first() if ascending else col.desc().nulls_last())
        else:  # no NULL to place: plain ASC/DESC, which an index on the column serves
            order.append(col.asc() if ascending else col.desc())
    return order + [key.asc() for key in _primary_key(q)]


def _nullable(column: Any) -> bool:
    """False only for a plain column declared NOT NULL; an expression may be NULL."""
    return getattr(getattr(column, "expression", column), "nullable", True) is not False


def _unknown(q: Queryable, name: str) -> UnknownFieldError:
    valid = list(q.fields)
    valid += [f"{rel}.<field>" for rel in q.relations]
    if q.tags is not None:
        valid += list(TAG_NAMES)
    return UnknownFieldError(
        f"field[{name}] is not a queryable field of {q.label};"
        f" valid fields are [{', '.join(valid)}]"
    )



# --- what a query accepts, as JSON Schema patterns (for /openapi.json) -------------------
# Each pattern accepts exactly the texts build_select accepts for the queryable (minus
# extreme values: 19-digit integers, dates before 1000), so that a client generated from
# the document never sends a query the server refuses.

_NOT_OP = r"[^=<>\x00]*"  # a value holding none of the operators' characters cannot move the split
_SYMBOL_OPS = r"(?:!=|>=|<=|=|>|<)"
_LIST_OPS = r"(?:!\?=|\?=)"
_LIKE_OPS = r"(?:!~=|~=)"
_MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_YEAR, _DAY = "(?:1[0-9]|20)[0-9]{2}", "(?:[1-9]|1[0-9]|2[0-8])"
_ISO = (rf"{_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
        r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9])?)?")
_VALUES: dict[type, str] = {
    int: r"[+-]?[0-9]{1,18}",
    float: r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})(?:[eE][+-]?[0-9]{1,2})?",
    bool: "(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
    datetime: (rf"(?:-?[0-9]{{1,12}}|{_ISO}|{_MONTH} {_DAY}, {_YEAR},?"
               r" (?:[1-9]|1[0-2]):[0-5][0-9]:[0-5][0-9] ?(?:AM|PM|am|pm))"),
}
#: members of a ``?=`` list are split at commas, which ZStack's US date form holds
_MEMBERS = {**_VALUES, datetime: rf"(?:-?[0-9]{{1,12}}|{_ISO})"}


def _operations(kind: type) -> str:
    """What may follow a field's name: a null test, or an operator and a value of ``kind``."""
    nulls = rf"\s*(?:is null|not null){_NOT_OP}"
    if kind is str:
        return rf"{nulls}|\s*(?:{_LIKE_OPS}|{_LIST_OPS}|{_SYMBOL_OPS}){_NOT_OP}"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        value = "(?:" + "|".join(re.escape(str(m.value)) for m in kind) + ")"
    else:
        value = _VALUES[kind]
    one, member = rf"\s*{value}\s*", rf"\s*{_MEMBERS.get(kind, value)}\s*"
    compare = r"(?:!=|=)" if kind is bool else _SYMBOL_OPS  # booleans are not ordered (build_select)
    return rf"{nulls}|\s*{_LIKE_OPS}{_NOT_OP}|\s*{_LIST_OPS}{member}(?:,{member})*|\s*{compare}{one}"


def condition_pattern(q: Queryable) -> str:
    """The pattern of one ``q=`` condition on ``q``: its fields, its tags, and the plain
    fields of the resources its relations lead to. Names of one kind share one spelling
    of their operators and values (a pattern per field ran to 9 KB on images)."""
    names: dict[type, list[str]] = {}
    for name, target in q.fields.items():
        names.setdefault(target.kind, []).append(name)
    if q.tags is not None:
        names.setdefault(str, []).extend(TAG_NAMES)
    for rel, clause in q.relations.items():
        for name, target in related(clause).fields.items():
            names.setdefault(target.kind, []).append(f"{rel}.{name}")
    alternatives = [f"(?:{'|'.join(map(re.escape, these))})(?:{_operations(kind)})" for kind, these in names.items()]
    return rf"^\s*(?:{'|'.join(alternatives)})$"


def sort_pattern(q: Queryable) -> str:
    """``sort``: ``+field``, ``-field`` or ``field``, a field that is not a list."""
    names = "|".join(re.escape(n) for n, f in q.fields.items() if isinstance(f, Field))
    return rf"^\s*[+-]?(?:{names})\s*$"


def fields_pattern(q: Queryable) -> str:
    """``fields``: comma-separated field names, blanks allowed, at least one name."""
    names = "(?:" + "|".join(re.escape(n) for n in q.fields) + ")"
    return rf"^[\s,]*{names}(?:\s*,[\s,]*(?:{names})?)*\s*$"
