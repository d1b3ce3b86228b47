"""Lists kept until the database changes, so that any page of them is a slice.

A query without conditions (``GET /backup-storage?start=5000&limit=20``, what consoles
and SDK listings send) asks for a window of one list: every row of the resource in the
query's order (its sort, then its key). While the database's version stays
(db/changes.py), that list cannot change. So once such pages have cost this node, in
their handlers, about what reading the whole list costs, the list is read once, each row
written once as its inventory's JSON, and every later page of it under this version is
a slice of it joined into the reply: no routing, no dependency, no database. That rule
(build when the misses' time reaches what the last build took) keeps a node whose
database changes often from building lists it never uses: it spends at most about twice
what the better choice, in hindsight, would have. Pages asked while their list is being
built wait for it (up to :data:`MAX_WAIT_SECONDS`) rather than run their handlers beside
it: on 2 cores those handlers slow the build down more than they save.

:class:`~imgstore.api.reply_cache.ReplyCache` holds it and applies its own rules: a page
is served only to an Authorization header a handler proved under this version (its
expiry checked), and a commit anywhere drops every list.

A kept list holds its rows' JSON deflated, :data:`BLOCK_ROWS` rows to a block, every
block against one dictionary made of the list's first rows: inventories repeat their
keys and most of their values, so a list of images takes a tenth or less of its JSON,
and a page inflates two or three small blocks. The list is read and written
:data:`BUILD_ROWS` rows at a time, by their keys (read first), so a build holds no more
records than that; a list of more batches than one keeps its keys meanwhile (below), so
its pages neither wait for its build nor walk an OFFSET. (The figures are in the
README's benchmark table: ``bench_app.py``.)

A list longer than ``IMGSTORE_KEPT_LIST_ROWS`` (:data:`MAX_ROWS`), or whose JSON would
not fit in what the other lists leave of :data:`MAX_BYTES`, keeps only its rows' keys,
in order: a page is then the rows of its slice of keys, read by key
(``catalog.queries.rows_of``) and written as its handler writes them, so no page walks
an OFFSET. Its rows are read after the version was checked, so the version is read again
after them: a commit in between sends the request to its handler.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import QueryParams

from imgstore.api.envelope import row_dict, rows_reply
from imgstore.services.catalog import queries as catalog
from imgstore.wire.query import QueryError, QuerySpec, parse_query

if TYPE_CHECKING:
    from imgstore.api.route_shapes import Amend, QueryRoutes
    from imgstore.services.node.runtime import Runtime

log = logging.getLogger(__name__)

#: the longest list kept by default (``IMGSTORE_KEPT_LIST_ROWS``): a longer one keeps its keys
MAX_ROWS = 200_000
#: all lists together (their rows' JSON, deflated)
MAX_BYTES = 48 << 20
#: rows to a deflated block: a page of 20 inflates 2 or 3 blocks
BLOCK_ROWS = 16
#: rows read and written at a time while a list is built
BUILD_ROWS = 1024
#: the first rows' JSON a list is deflated against (deflate uses at most 32 KiB)
DICTIONARY_BYTES = 16 << 10
#: the longest list whose keys are kept
MAX_KEYS = 500_000
#: how long a page waits for its list's build before its handler answers it instead
MAX_WAIT_SECONDS = 2.0
#: what a first build is assumed to cost, before one was measured
FIRST_BUILD_SECONDS = 0.02
#: what a kept key costs: a 32-character str and its slot in the list
KEY_BYTES = 90


def pageable(endpoint: Callable[..., Any], source: QueryRoutes) -> None:
    """Mark ``endpoint`` as the list route of ``source``, whose pages may be kept."""
    endpoint.kept_pages = source  # type: ignore[attr-defined]  # a mark the route keeps, as reply_cache's


class _List:
    """Every row's JSON and ``schema`` entries (each ``<path below the row>":"<class>``),
    the JSON deflated :data:`BLOCK_ROWS` rows to a block against ``dictionary``."""

    def __init__(self, blocks: list[bytes], schemas: list[tuple[bytes, ...]], dictionary: bytes, size: int) -> None:
        self.blocks = blocks
        self.schemas = schemas
        self.dictionary = dictionary
        self.size = size  # what :class:`_Packer` counted

    def __len__(self) -> int:
        return len(self.schemas)

    def bodies(self, start: int, stop: int) -> list[bytes]:
        """The JSON of rows ``start`` to ``stop`` (``stop`` at most the list's length)."""
        if start >= stop:
            return []
        first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
        rows: list[bytes] = []
        for block in self.blocks[first:last + 1]:
            rows += zlib.decompressobj(-zlib.MAX_WBITS, self.dictionary).decompress(block).split(b"\n")
        skip = start - first * BLOCK_ROWS
        return rows[skip:skip + stop - start]


class _Packer:
    """Writes a list's rows into a :class:`_List`, a batch at a time, and stops once it
    would pass ``budget`` bytes. orjson writes no raw newline, so one separates rows."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.blocks: list[bytes] = []
        self.schemas: list[tuple[bytes, ...]] = []
        self.dictionary = b""
        self._deflated = 0  # the blocks' bytes
        self._pending: list[bytes] = []
        self._shared: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}  # rows of one shape share their entries

    def add(self, records: Sequence[Any], inventory_class: Callable[[Any], Any], amend: Amend | None) -> bool:
        """Write ``records``; ``False`` when the list has passed its budget."""
        for record in records:
            schema: list[tuple[str, str]] = []
            item = row_dict(inventory_class(record), record, "", schema)
            if amend is not None:
                amend(record, item)
            entries = tuple(orjson.dumps(path)[1:-1] + b'":' + orjson.dumps(cls) for path, cls in schema)
            self.schemas.append(self._shared.setdefault(entries, entries))
            self._pending.append(orjson.dumps(item))
        if not self.blocks:  # the first rows: what the others most resemble
            self.dictionary = b"\n".join(self._pending)[:DICTIONARY_BYTES]
        while len(self._pending) >= BLOCK_ROWS:
            self._deflate(BLOCK_ROWS)
        return self.size <= self.budget

    @property
    def size(self) -> int:
        """What the list holds: its blocks, its dictionary and a slot a row."""
        return self._deflated + len(self.dictionary) + 8 * len(self.schemas)

    def done(self) -> _List:
        if self._pending:
            self._deflate(len(self._pending))
        return _List(self.blocks, self.schemas, self.dictionary, self.size)

    def _deflate(self, rows: int) -> None:
        packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=self.dictionary)
        block = packer.compress(b"\n".join(self._pending[:rows])) + packer.flush()
        del self._pending[:rows]
        self.blocks.append(block)
        self._deflated += len(block)


@dataclass
class _Keys:
    keys: list[str]

    @property
    def size(self) -> int:
        """What the keys cost to keep, counted as the lists' budget counts it."""
        return KEY_BYTES * len(self.keys)


@dataclass(frozen=True)
class _Source:
    route: Any
    queries: QueryRoutes


class KeptPages:
    """The lists of one node, for one database version at a time."""

    def __init__(self, max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._sources: dict[str, _Source] = {}  # by path: learnt from the routes that served them
        self._version: Hashable | None = None
        self._lists: dict[tuple[str, Any], _List | _Keys | None] = {}  # None: too long under this version
        self._spent: dict[tuple[str, Any], float] = {}
        self._building: dict[tuple[str, Any], asyncio.Event] = {}  # set when the build ends
        self._build_seconds: dict[str, float] = {}  # the last build's, per path: kept across versions
        self._bytes = 0

    def forget_all(self, version: Hashable) -> None:
        """The database moved to ``version``: every list is stale."""
        self._version = version
        self._lists = {}
        self._spent = {}
        self._bytes = 0

    async def page(self, scope: Any, version: Hashable) -> tuple[bytes, Any] | None:
        """The reply body of the page ``scope`` asks for and its route, when a kept list
        holds it (the database at ``version``); ``None`` sends the request to its handler."""
        found = self._plain(scope)
        if found is None:
            return None
        source, spec = found
        slot = (scope["path"], spec.sort)
        building = self._building.get(slot)
        if building is not None and slot not in self._lists:  # rather than slow it down with a handler's work
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(building.wait(), MAX_WAIT_SECONDS)
        kept = self._lists.get(slot)
        if isinstance(kept, _List):
            return _reply(kept, spec), source.route
        if isinstance(kept, _Keys):
            body = await self._page_by_keys(scope["app"].state.runtime, source.queries, kept, spec, version)
            return (body, source.route) if body is not None else None
        return None

    async def _page_by_keys(self, rt: Runtime, queries: QueryRoutes, kept: _Keys, spec: QuerySpec,
                            version: Hashable) -> bytes | None:
        """The page's rows, read by their keys, as their handler writes them."""
        keys = kept.keys[spec.start:spec.start + spec.limit]
        try:
            rows = await catalog.rows_of(rt, queries.queryable, keys, spec.sort)
            amend = await queries.amend(rt, rows) if queries.amend else None
            if [row.uuid for row in rows] != keys or await rt.changes.version() != version:
                return None  # changed meanwhile
        except Exception:  # whatever failed, the handler answers it, in ZStack's words
            log.debug("a page of a kept list failed: its handler answers it", exc_info=True)
            return None
        total = len(kept.keys) if spec.reply_with_count else None
        return orjson.dumps(rows_reply(rows, queries.inventory_class, total, (), amend))

    async def missed(self, scope: Any, rt: Runtime, version: Hashable, seconds: float) -> None:
        """A handler answered ``scope`` with a page of a list not kept, in ``seconds``,
        while the database was at ``version``: build the list when the misses have cost
        what building it does."""
        found = self._plain(scope) if self.max_rows else None
        if found is None or version != self._version:
            return
        source, spec = found
        slot = (scope["path"], spec.sort)
        if slot in self._lists or slot in self._building:
            return
        self._spent[slot] = spent = self._spent.get(slot, 0.0) + seconds
        if spent < self._build_seconds.get(slot[0], FIRST_BUILD_SECONDS):
            return
        self._building[slot] = asyncio.Event()
        started = time.monotonic()
        try:
            await self._build(rt, source.queries, spec, slot, version)
            self._build_seconds[slot[0]] = time.monotonic() - started
        except _Changed:
            pass  # a commit moved the version meanwhile: the list may be stale already
        except Exception:  # the handlers go on answering its pages, and pay for the next try
            log.warning("list %s sorted by %s could not be kept", slot[0], spec.sort, exc_info=True)
            self._spent[slot] = 0.0
        finally:
            self._building.pop(slot).set()

    async def _build(self, rt: Runtime, queries: QueryRoutes, spec: QuerySpec, slot: tuple[str, Any],
                     version: Hashable) -> None:
        """Keep the list of ``slot``: every row as its inventory's JSON, or only their keys
        when there are more than ``max_rows`` or their JSON would not fit in what the other
        lists leave of ``max_bytes``; nothing when there are more than :data:`MAX_KEYS`.
        A list of more than one batch keeps its keys as soon as they are read, so that
        while its rows are written its pages are read by key: they neither wait for the
        build nor walk an OFFSET in their handlers."""
        keys = await catalog.keys(rt, queries.queryable, spec, MAX_KEYS + 1)
        if len(keys) > MAX_KEYS:
            await self._keep(rt, slot, version, None)
            return
        budget = self.max_bytes - self._bytes
        if len(keys) > min(BUILD_ROWS, self.max_rows):
            await self._keep(rt, slot, version, _Keys(keys))
        if len(keys) > self.max_rows:
            return

        async def read(batch: list[Any]) -> tuple[Sequence[Any], Amend | None]:
            records = await catalog.rows_of(rt, queries.queryable, batch, spec.sort)
            return records, await queries.amend(rt, records) if queries.amend else None

        kept = await _packed(keys, read, queries.inventory_class, budget)
        log.debug("list %s sorted by %s: %d rows, %s bytes of JSON deflated", slot[0], spec.sort, len(keys),
                  kept.size if kept else "too many")
        await self._keep(rt, slot, version, kept if kept is not None else _Keys(keys))

    async def _keep(self, rt: Runtime, slot: tuple[str, Any], version: Hashable, kept: _List | _Keys | None) -> None:
        """Hold ``kept`` for ``slot`` in place of what it held (``None``: too long to keep),
        if the database is still at ``version`` and the lists still fit in ``max_bytes``."""
        if version != self._version or await rt.changes.version() != version:
            raise _Changed
        held = self._lists.get(slot)
        size = (kept.size if kept else 0) - (held.size if held else 0)
        if self._bytes + size > self.max_bytes:
            return
        self._lists[slot] = kept
        self._bytes += size

    def _plain(self, scope: Any) -> tuple[_Source, QuerySpec] | None:
        """The kept list's route and the query, for a query that only pages and sorts."""
        source = self._sources.get(scope["path"])
        if source is None:
            source = self._learn(scope)
            if source is None:
                return None
        items = QueryParams(scope["query_string"]).multi_items()
        if any("\x00" in k + v for k, v in items):
            return None  # deps.refuse_nul's to refuse
        try:
            spec = parse_query(items)
        except QueryError:
            return None
        if spec.conditions or spec.fields or spec.count:
            return None
        return source, spec

    def _learn(self, scope: Any) -> _Source | None:
        """The list route a handler just served ``scope`` with, from then on known by its
        path (a list's path has no parameter)."""
        route = scope.get("route")
        queries = getattr(getattr(route, "endpoint", None), "kept_pages", None)
        if queries is None:
            return None
        source = self._sources[scope["path"]] = _Source(route, queries)
        return source


class _Changed(Exception):
    """The list's rows are no longer what its keys said: a commit came between."""


async def _packed(keys: list[Any], read: Callable[[list[Any]], Awaitable[tuple[Sequence[Any], Amend | None]]],
                  inventory_class: Callable[[Any], Any], budget: int, batch: int = BUILD_ROWS) -> _List | None:
    """The rows of ``keys``, read ``batch`` at a time by ``read``, written into a list in
    a thread (the loop answers other requests between batches); ``None`` when their JSON
    passes ``budget`` bytes."""
    packer = _Packer(budget)
    for i in range(0, len(keys), batch):
        wanted = keys[i:i + batch]
        records, amend = await read(wanted)
        if [record.uuid for record in records] != wanted:
            raise _Changed
        if not await asyncio.to_thread(packer.add, records, inventory_class, amend):
            return None
    return packer.done()


def _reply(kept: _List, spec: QuerySpec) -> bytes:
    """What ``envelope.rows_reply`` writes for the page ``spec`` asks of ``kept``."""
    start, stop = spec.start, min(spec.start + spec.limit, len(kept))
    parts = [b'{"inventories":[', b",".join(kept.bodies(start, stop)), b"]"]
    if spec.reply_with_count:
        parts.append(b',"total":%d' % len(kept))
    entries = [b'"inventories[%d]%s' % (i, entry) for i, schema in enumerate(kept.schemas[start:stop])
               for entry in schema]
    parts += [b',"schema":{', b",".join(entries), b"}}"]
    return b"".join(parts)
