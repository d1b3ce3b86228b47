"""The route shapes every resource shares, made from a declaration, so that each shape is
written once: a Query* API (:class:`QueryRoutes`) and a Delete* API (:func:`delete_route`).
The third shape, ``PUT .../actions``, is ``api/actions.py``'s :class:`ActionTable`.

A resource's query is a :class:`QueryRoutes`: its API name, path, :class:`Queryable`
(what the document says of ``q``, ``sort`` and ``fields``), inventory models, and the
service function that answers a :class:`QuerySpec` with a page of rows and, when asked,
the total. :meth:`QueryRoutes.route` makes ``GET /<resources>`` and ``GET
/<resources>/{uuid}`` from it, cacheable by ``api/reply_cache.py`` (their reply is a
function of the database and the request), every reply written by
``envelope.rows_reply`` (the fast row path, no pydantic).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from imgstore.api.deps import ApiCall, api_call, query_spec, runtime
from imgstore.api.envelope import JsonReply, rows_reply
from imgstore.api.kept_pages import pageable
from imgstore.api.openapi import EmptyReply, job_api, query_api
from imgstore.api.reply_cache import cacheable
from imgstore.api.schemas import DeleteMode
from imgstore.db.query import Queryable
from imgstore.services.node.runtime import Runtime
from imgstore.wire.inventories import Inventory
from imgstore.wire.query import QuerySpec

#: the service's query: ``(rt, spec)`` → the page's rows and the total when ``spec`` asks
Rows = Callable[[Runtime, QuerySpec], Awaitable[tuple[Sequence[Any], int | None]]]
#: what a row's dict gets before ``fields=`` projects it (``rows_reply``'s ``amend``)
Amend = Callable[[Any, dict[str, Any]], None]


@dataclass(frozen=True)
class QueryRoutes:
    """One ZStack Query* API."""

    api: str  # "QueryZone": the routes' summaries
    path: str  # "/zones"; by uuid: "/zones/{uuid}"
    queryable: Queryable
    inventories: tuple[type[Inventory], ...]  # what the document says an item is (one or two models)
    rows: Rows
    inventory_class: Callable[[Any], type[Inventory]]  # a row's inventory model
    #: ``(rt, rows)`` → how to amend each row's dict (images: export and upload URLs)
    amend: Callable[[Runtime, Sequence[Any]], Awaitable[Amend]] | None = None

    async def answer(self, request: Request, rt: Runtime, uuid: str | None) -> JsonReply:
        spec = query_spec(request, uuid)
        rows, total = await self.rows(rt, spec)
        if spec.count:
            return JsonReply({"total": total})
        amend = await self.amend(rt, rows) if self.amend else None
        return JsonReply(rows_reply(rows, self.inventory_class, total, spec.fields, amend))

    def route(self, router: APIRouter, *, name: str, by_uuid_name: str) -> None:
        """Both routes on ``router``; ``name`` and ``by_uuid_name`` are the routes' names
        (they make the document's operationIds)."""
        document = query_api(self.queryable, *self.inventories)

        async def query(request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
            return await self.answer(request, rt, None)

        async def by_uuid(uuid: str, request: Request, rt: Runtime = Depends(runtime)) -> JsonReply:
            return await self.answer(request, rt, uuid)

        pageable(query, self)
        router.get(self.path, summary=self.api, name=name, **document)(cacheable(query))
        router.get(f"{self.path}/{{uuid}}", summary=f"{self.api} by uuid", name=by_uuid_name,
                   **document)(cacheable(by_uuid))


#: the service's delete: ``(rt, uuid, deleteMode)``
Delete = Callable[[Runtime, str, str], Awaitable[object]]


def delete_route(router: APIRouter, path: str, api: str, delete: Delete, *, name: str) -> None:
    """``DELETE path`` (its one path parameter is ``uuid``): ZStack's Delete* API, a job
    answering ``{}``, with ``deleteMode`` (``Permissive`` by default, or ``Enforcing``)."""

    async def endpoint(
        uuid: str, deleteMode: DeleteMode = "Permissive", call: ApiCall = Depends(api_call)
    ) -> JSONResponse:
        async def work() -> dict[str, Any]:
            await delete(call.rt, uuid, deleteMode)
            return {}

        return await call.run(api, work)

    router.delete(path, summary=api, name=name, **job_api(EmptyReply))(endpoint)
