"""Running a ZStack query: one way for every resource."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from sqlalchemy import Integer, bindparam
from sqlalchemy.sql import Select

from imgstore.db import query as q
from imgstore.errors import INVALID_ARGUMENT, ApiError
from imgstore.wire.query import QuerySpec
from imgstore.services.node.runtime import Runtime

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
    """The page of rows a query asks for and, when it asks, the total; a query naming
    what the resource does not have is SYS.1007."""
    try:
        page, count, params = _statements(queryable, spec)
    except q.QueryFieldError as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None
    async with rt.db() as db:
        total = await db.scalar(count) if count is not None else None
        rows = [] if spec.count else list((await db.scalars(page, params)).unique())
    return rows, total


def _statements(queryable: q.Queryable, spec: QuerySpec) -> tuple[Select[Any], Select[Any] | None, dict[str, int]]:
    """The page select (its collections joined: one statement) and the count select."""
    if spec.conditions:
        page, count = q.build_select(queryable, spec)
        return page.options(*q.joined_loads(queryable.entity)), count, {}
    key = (id(queryable), spec.sort, spec.fields, spec.count, spec.reply_with_count)
    cached = _plain.get(key)
    if cached is None or cached[0] is not queryable:
        shape = dataclasses.replace(_PLAIN_PAGE, sort=spec.sort, fields=spec.fields, count=spec.count,
                                    reply_with_count=spec.reply_with_count)
        page, count = q.build_select(queryable, shape)
        cached = _plain[key] = (queryable, page.options(*q.joined_loads(queryable.entity)), count)
        while len(_plain) > MAX_PLAIN_STATEMENTS:
            _plain.popitem(last=False)  # the least recently used
    else:
        _plain.move_to_end(key)
    return cached[1], cached[2], {"page_start": spec.start, "page_limit": spec.limit}
