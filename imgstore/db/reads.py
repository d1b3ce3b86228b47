"""Plain reads: compiled selects run on the database driver itself, a whole reading at once.

A query's page, its count and the collections its inventories nest are a few SELECTs whose
text never changes for a shape of query. Through an ``AsyncSession`` each one paid for the
ORM's execution (options, loading, identity) and, on SQLite, for some fourteen hops
between the event loop and aiosqlite's thread per page. Here a select is compiled once into
:class:`Sql` (its text for the engine's dialect, the order of its parameters, how to read
each column), and a *reading* (a generator that yields ``(Sql, values)`` and receives the
rows) runs whole on the driver:

* SQLite: in a small pool of threads, each with its own connection to the database file
  (``query_only``), inside one ``BEGIN``: one hop per reading, and the page and its
  collections see one snapshot. SQLite runs without the GIL while it steps, so the event
  loop keeps serving meanwhile;
* any other database (PostgreSQL): on a pooled connection of the engine in autocommit,
  each SELECT as the driver's own statement (``exec_driver_sql``), no ORM.

Readings only read: code that changes rows goes through the ORM as before.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select
from sqlalchemy.sql.cache_key import CacheKey

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
#: yields the statements to run, one at a time, and receives each one's rows
Reading = Generator[tuple["Sql", Mapping[str, Any]], Rows, T]

#: SQLite threads: a reading that scans (a ``~=`` over 100k images) leaves one for the others
SQLITE_THREADS = 2
#: compiled selects kept by :meth:`Reads.compiled`: one per shape of query asked lately
MAX_COMPILED = 512


@dataclass(frozen=True)
class Sql:
    """One select compiled for one dialect: its text, the names of its parameters in the
    order the driver takes them (``None``: the driver takes them by name), the values it
    carries (a condition's, a subclass's discriminator), and the converter of each column
    the driver does not return as the model's type (SQLite's dates are text, its booleans
    integers)."""

    text: str
    names: tuple[str, ...] | None
    carried: Mapping[str, Any]
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]
    bind: Callable[[Any], Any] | None  # for values the driver cannot take as they are
    #: with a cache key: the name each of its values has here, and whether it is an IN
    #: list (written out as ``name_1, name_2...``), in the key's order (:meth:`values_of`)
    slots: tuple[tuple[str, bool], ...] = ()

    def values_of(self, key: CacheKey) -> dict[str, Any]:
        """The parameters of another select of this one's shape (an equal cache key, IN
        lists of the same lengths): its values, by the names they have in this one."""
        values: dict[str, Any] = {}
        for (name, expanding), param in zip(self.slots, key.bindparams, strict=True):
            if expanding:
                values.update((f"{name}_{i}", v) for i, v in enumerate(param.effective_value or (), 1))
            else:
                values[name] = param.effective_value
        return values

    def args(self, given: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        """The parameters as the driver takes them: the values given, else those carried."""
        values = {**self.carried, **given} if given else self.carried
        bind = self.bind
        if self.names is None:
            return {k: bind(v) for k, v in values.items()} if bind else values
        return tuple(bind(values[n]) for n in self.names) if bind else tuple(values[n] for n in self.names)

    def read(self, rows: list[Any]) -> Rows:
        """The driver's rows (tuples) as the model's values."""
        if not self.converters:
            return rows
        out = []
        for row in rows:
            values = list(row)
            for i, convert in self.converters:
                if values[i] is not None:
                    values[i] = convert(values[i])
            out.append(tuple(values))
        return out


def compile_select(statement: Select[Any], dialect: Dialect, key: CacheKey | None = None) -> Sql:
    """``statement`` as :class:`Sql` for ``dialect``: the values it holds are carried (an
    ``IN`` list written out as one parameter per member) and may be given others at each
    run, by name (a kept page's bounds, compiled with stand-ins; with ``key``, the
    statement's cache key, those of another select of its shape: :meth:`Sql.values_of`)."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    slots: tuple[tuple[str, bool], ...] = ()
    if key is not None:
        rendered = {param.key: name for param, name in compiled.bind_names.items()}
        slots = tuple((rendered[param.key], param.expanding) for param in key.bindparams)
    converters = []
    if dialect.name == "sqlite":  # psycopg answers the model's types itself
        for i, column in enumerate(statement.selected_columns):
            convert = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if convert is not None:
                converters.append((i, convert))
    names = tuple(compiled.positiontup or ()) if dialect.positional else None
    return Sql(compiled.string, names, dict(compiled.params), tuple(converters), _binder(dialect), slots)


def _binder(dialect: Dialect) -> Callable[[Any], Any] | None:
    """SQLite keeps dates as SQLAlchemy writes them (``2021-03-04 05:06:07.000000``), so a
    date compared with one is written the same way; other drivers take dates as they are."""
    if dialect.name != "sqlite":
        return None
    write_date = DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert write_date is not None

    def bind(value: Any) -> Any:
        return write_date(value) if isinstance(value, datetime) else value

    return bind


class Reads:
    """Runs readings on one engine's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        url = engine.url
        self._path = url.database if url.get_backend_name() == "sqlite" else None
        if self._path in ("", ":memory:") or (self._path or "").startswith("file:"):
            self._path = None  # a database no other connection sees: read through the engine
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple[Any, ...], Sql] = OrderedDict()

    def compiled(self, statement: Select[Any]) -> tuple[Sql, dict[str, Any]]:
        """``statement`` compiled, with its values: compiling costs several times what
        building and running a select does (~0.6-1 ms against ~0.15), so a select is
        compiled once per shape (SQLAlchemy's cache key, which leaves the values out, and
        the lengths of its IN lists) and later ones of that shape take its text with their
        own values (the last :data:`MAX_COMPILED` shapes are kept)."""
        key = statement._generate_cache_key()
        if key is None:  # an element that cannot say its shape: compiled each time
            return compile_select(statement, self.dialect), {}
        slot = (key.key, tuple(len(p.effective_value or ()) for p in key.bindparams if p.expanding))
        sql = self._compiled.get(slot)
        if sql is None:
            sql = self._compiled[slot] = compile_select(statement, self.dialect, key)
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)  # the least recently used
        else:
            self._compiled.move_to_end(slot)
        return sql, sql.values_of(key)

    async def run(self, reading: Reading[T]) -> T:
        """What ``reading`` returns, having run each statement it yields."""
        if self._path is not None:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(SQLITE_THREADS, thread_name_prefix="imgstore-reads")
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_sqlite, reading)
        async with self.engine.connect() as conn:
            # no BEGIN and ROLLBACK round trips around the SELECTs: at PostgreSQL's READ
            # COMMITTED each statement takes its own snapshot in a transaction too
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows: Rows | None = None
            while True:
                try:
                    sql, values = reading.send(rows)  # type: ignore[arg-type]  # None starts it
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]  # StopIteration's value is Any
                result = await conn.exec_driver_sql(sql.text, sql.args(values))
                rows = sql.read(list(result.all()))

    def _run_sqlite(self, reading: Reading[T]) -> T:
        conn = self._sqlite()
        conn.execute("BEGIN")  # one snapshot for the page, its count and its collections
        try:
            rows: Rows | None = None
            while True:
                try:
                    sql, values = reading.send(rows)  # type: ignore[arg-type]  # None starts it
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]  # StopIteration's value is Any
                rows = sql.read(conn.execute(sql.text, sql.args(values)).fetchall())
        finally:
            conn.execute("ROLLBACK")

    def _sqlite(self) -> sqlite3.Connection:
        """This thread's connection: no transaction of Python's (``BEGIN`` is ours), and
        writes refused (``query_only``), so a reading can never change the database."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self._path is not None
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Stop the threads and close their connections."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
