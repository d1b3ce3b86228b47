"""The schema's migrations (Alembic, ``db/migrations``), applied on start.

Alembic and Mako stay resident in a process that imports them (~11 MiB). A node whose
database is at :data:`imgstore.db.engine.SCHEMA_HEAD` (every start but the first after
an upgrade) never does: :func:`imgstore.db.engine.migrate` reads the revision first and
imports this module only when the database is behind.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

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
