"""ZStack's query string → :class:`QuerySpec`.

ZStack's ``RestServer.handleQueryApi`` reads ``q`` (repeatable), ``limit``, ``start``,
``count``, ``replyWithCount``, ``sort`` and ``fields``, and ignores every other key. A
condition is ``<name><op><value>``; the operator is the first entry of
:data:`OPERATORS` *contained anywhere* in the text, and the text is split at its first
occurrence. That order is why ``name=a!=b`` means ``name=a`` ``!=`` ``b``: it is kept so
that a condition means here what it means on ZStack.

This module is pure: it knows nothing of HTTP, SQL or inventories. Whether a field
exists, and whether a value fits its type, is decided by ``imgstore.db.query``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imgstore.wire.numbers import DIGITS  # int() of more than 4300 digits raises: a 500

#: ZStack's operator table, in scan order. An operator that contains another one
#: (``!=`` contains ``=``) must come before it.
OPERATORS: tuple[str, ...] = (
    "!=", ">=", "<=", "!?=", "!~=", "~=", "?=", "=", ">", "<", "is null", "not null",
)
NULL_OPERATORS = frozenset({"is null", "not null"})
LIST_OPERATORS = frozenset({"?=", "!?="})

DEFAULT_LIMIT = 1000
_JAVA_INT_MAX = 2**31 - 1  # ZStack binds limit/start to a Java int; larger is a 400 there


class QueryError(ValueError):
    """A malformed query string; the message names the parameter and what is wrong."""


@dataclass(frozen=True)
class Condition:
    """One ``q=`` condition, exactly as the client wrote it (the value is not trimmed)."""

    name: str
    op: str
    value: str | None = None

    @property
    def values(self) -> list[str]:
        """The comma-separated members of an ``?=``/``!?=`` value, untrimmed like ZStack's."""
        if self.value is None:
            return []
        if self.op in LIST_OPERATORS:
            return self.value.split(",")
        return [self.value]

    def __str__(self) -> str:
        if self.op in NULL_OPERATORS:
            return f"{self.name} {self.op}"
        return f"{self.name}{self.op}{self.value}"


@dataclass(frozen=True)
class QuerySpec:
    """Everything a ZStack query asks for, validated for syntax only."""

    conditions: tuple[Condition, ...] = ()
    limit: int = DEFAULT_LIMIT
    start: int = 0
    count: bool = False
    reply_with_count: bool = False
    sort: tuple[str, bool] | None = None  # (field, ascending)
    fields: tuple[str, ...] = ()


def parse_condition(text: str) -> Condition:
    """Split one condition the way ZStack does: first operator of the table found wins."""
    op = next((candidate for candidate in OPERATORS if candidate in text), None)
    if op is None:
        raise QueryError(
            f"Invalid query parameter. The '{text}' in the parameter[q] doesn't contain any"
            f" query operator. Valid query operators are [{', '.join(OPERATORS)}]"
        )
    name, _, value = text.partition(op)
    name = name.strip()
    if not name:
        raise QueryError(
            f"Invalid query parameter. The condition[{text}] in the parameter[q] has no field"
            f" name before the operator[{op}]"
        )
    # ZStack ignores whatever follows "is null"/"not null"; so do we.
    return Condition(name=name, op=op, value=None if op in NULL_OPERATORS else value)


def parse_query(params: Sequence[tuple[str, str]]) -> QuerySpec:
    """Build a :class:`QuerySpec` from decoded query-string pairs, in request order.

    Every ``q`` adds a condition (they are ANDed). For the single-valued parameters the
    first occurrence counts, as in ZStack (it reads ``getParameterMap()[name][0]``).
    """
    conditions: list[Condition] = []
    first: dict[str, str] = {}
    for key, value in params:
        key = key.strip()
        if key == "q":
            conditions.append(parse_condition(value))
        else:
            first.setdefault(key, value)
    return QuerySpec(
        conditions=tuple(conditions),
        limit=_int_param(first, "limit", DEFAULT_LIMIT),
        start=_int_param(first, "start", 0),
        count=_bool_param(first, "count"),
        reply_with_count=_bool_param(first, "replyWithCount"),
        sort=_sort_param(first.get("sort")),
        fields=_fields_param(first.get("fields")),
    )


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    """A non-negative Java-int-sized integer; anything else is the client's mistake."""
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not DIGITS.fullmatch(text) or int(text) > _JAVA_INT_MAX:
        raise QueryError(
            f"Invalid query parameter. '{name}' must be a non-negative integer, but '{raw}' found"
        )
    return int(text)


def _bool_param(params: dict[str, str], name: str) -> bool:
    """``true``/``false`` in any case, like ZStack's ``TypeVerifier`` demands of booleans."""
    raw = params.get(name)
    if raw is None:
        return False
    text = raw.strip().lower()
    if text not in ("true", "false"):
        raise QueryError(
            f"Invalid query parameter. '{name}' must be true or false, but '{raw}' found"
        )
    return text == "true"


def _sort_param(raw: str | None) -> tuple[str, bool] | None:
    """``+f``/``f`` ascending, ``-f`` descending.

    An unencoded ``+`` arrives form-decoded as a space, so surrounding blanks are
    stripped first (ZStack trims the value too), which makes `` name`` ascending.
    """
    if raw is None:
        return None
    text = raw.strip()
    ascending = not text.startswith("-")
    field = text[1:] if text[:1] in ("+", "-") else text
    if not field or field[:1] in ("+", "-") or any(ch.isspace() for ch in field):
        raise QueryError(
            f"Invalid query parameter. 'sort' must be +<field>, -<field> or <field>,"
            f" but '{raw}' found"
        )
    return field, ascending


def _fields_param(raw: str | None) -> tuple[str, ...]:
    """Comma-separated field names, blanks dropped; at least one must remain."""
    if raw is None:
        return ()
    fields = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not fields:
        raise QueryError("Invalid query parameter. 'fields' contains zero field")
    return fields
