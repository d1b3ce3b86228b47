"""The schema's migrations (Alembic, ``db/migrations``), applied on start.

Alembic and Mako (and the SQLAlchemy dialects Alembic imports) stay resident in a
process that imports them, so the server never does: :func:`imgstore.db.engine.migrate`
reads the revision first and, when the database is behind, runs this module as a child
process (``python -m imgstore.db.schema --log-level LEVEL``, the database URL on its
stdin), which migrates and exits.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from imgstore import logs
from imgstore.db.engine import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(connection: Connection, url: str) -> None:
    """Bring the schema to head on ``connection`` (blocking: run it in ``run_sync``)."""
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def head() -> str | None:
    """The newest revision of the migrations."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def upgrade_at(url: str) -> None:
    """Bring the schema of the database at ``url`` to head, one migrator at a time when
    several nodes start together on one PostgreSQL."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(7355608)"))
            await conn.run_sync(upgrade, url)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m imgstore.db.schema", description=__doc__)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    logs.configure(args.log_level)
    try:
        asyncio.run(upgrade_at(sys.stdin.read().strip()))
    except Exception:
        logging.getLogger(__name__).exception("the schema migration failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
