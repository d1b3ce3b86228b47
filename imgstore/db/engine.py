"""The database engine, its sessions, and migrations applied on start."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import CursorResult, Result, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from imgstore.wire.dates import utcnow

MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    kwargs = {"connect_args": {"timeout": 30}} if is_sqlite else {"pool_size": 10, "max_overflow": 20}
    engine = create_async_engine(url, **kwargs)
    if is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
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


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to head; safe to run on every start and from several nodes."""
    url = engine.url.render_as_string(hide_password=False)

    def upgrade(connection) -> None:  # type: ignore[no-untyped-def]
        cfg = alembic_config(url)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # one migrator at a time when several nodes start together
            await conn.execute(text("SELECT pg_advisory_xact_lock(7355608)"))
        await conn.run_sync(upgrade)



__all__ = ["alembic_config", "create_engine", "db_now", "migrate", "sessionmaker"]


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed. ``AsyncSession.execute`` is typed as
    returning a plain ``Result``; for a DML statement it is a ``CursorResult``."""
    return cast(CursorResult[Any], result).rowcount
