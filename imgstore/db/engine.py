"""The database engine, its sessions, and migrations applied on start."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, CursorResult, Result, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import imgstore
from imgstore.wire.dates import utcnow

SCHEMA_HEAD = "0012"
"""The newest revision in db/migrations/versions (tests/unit/db holds it to Alembic's head):
a database at it needs no migration, and Alembic is not loaded (imgstore.db.schema)."""

_IMPORT_ROOT = str(Path(imgstore.__file__).resolve().parents[1])  # the migration child imports imgstore from here


class MigrationFailed(RuntimeError):
    """The migration child could not bring the schema to head (its log says why)."""


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    kwargs = {"connect_args": {"timeout": 30}} if is_sqlite else {"pool_size": 10, "max_overflow": 20}
    engine = create_async_engine(url, **kwargs)
    if is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:  # the driver's connection (sqlite3's)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def db_now(db: AsyncSession) -> datetime:
    """Naive UTC now by the database's clock: nodes sharing PostgreSQL judge leases and
    heartbeats by one clock, whatever their own clocks say. SQLite serves one node: its
    clock is the database's."""
    bind = db.get_bind()
    if bind.dialect.name == "postgresql":
        now: datetime = await db.scalar(text("SELECT timezone('UTC', clock_timestamp())"))
        return now
    return utcnow()


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to head; safe to run on every start and from several nodes.

    A database behind head is migrated by a child process (``python -m imgstore.db.schema``,
    :func:`imgstore.db.schema.upgrade_at`): Alembic, Mako and the SQLAlchemy dialects
    Alembic loads would stay resident in the server for good after a first start. The
    child logs as the server does, on its stderr; the URL (with its password) reaches it
    on its stdin, never in its argv or environment."""
    async with engine.connect() as conn:
        if await conn.run_sync(_revision) == SCHEMA_HEAD:
            return
    url = engine.url.render_as_string(hide_password=False)
    level = logging.getLevelName(logging.getLogger("alembic").getEffectiveLevel()).lower()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imgstore.db.schema", "--log-level", level,
        stdin=asyncio.subprocess.PIPE, env=_child_environment(os.environ))
    try:
        await proc.communicate(url.encode())
    finally:
        if proc.returncode is None:  # cancelled: the child must not outlive the start
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise MigrationFailed(f"the schema migration to {SCHEMA_HEAD} failed (exit {proc.returncode}); "
                              "its log lines are above")


def _child_environment(environ: os._Environ[str]) -> dict[str, str]:
    """The migration child's environment: this one but imgstore's settings (the secret
    key, the admin password: the child needs none), with imgstore importable."""
    env = {k: v for k, v in environ.items() if not k.startswith("IMGSTORE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, environ.get("PYTHONPATH")) if p)
    return env


def _revision(connection: Connection) -> str | None:
    """The revision the database's schema is at (None: none yet)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    revision: str | None = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return revision


__all__ = ["SCHEMA_HEAD", "MigrationFailed", "create_engine", "db_now", "migrate", "sessionmaker"]


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed. ``AsyncSession.execute`` is typed as
    returning a plain ``Result``; for a DML statement it is a ``CursorResult``."""
    return cast(CursorResult[Any], result).rowcount
