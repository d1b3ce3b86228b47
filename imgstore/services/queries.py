"""Running a ZStack query: one way for every resource."""
from __future__ import annotations

from typing import Any

from imgstore.db import query as q
from imgstore.errors import INVALID_ARGUMENT, ApiError
from imgstore.query import QuerySpec
from imgstore.services.runtime import Runtime


async def run(rt: Runtime, queryable: q.Queryable, spec: QuerySpec) -> tuple[list[Any], int | None]:
    """The page of rows a query asks for and, when it asks, the total; a query naming
    what the resource does not have is SYS.1007."""
    try:
        page, count = q.build_select(queryable, spec)
    except q.QueryFieldError as e:
        raise ApiError(INVALID_ARGUMENT, str(e)) from None
    async with rt.db() as db:
        total = await db.scalar(count) if count is not None else None
        if spec.count:
            rows = []
        else:  # the rows and their collections in one statement
            page = page.options(*q.joined_loads(queryable.entity))
            rows = list((await db.scalars(page)).unique())
    return rows, total
