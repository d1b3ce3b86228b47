"""The Alembic migrations build exactly the schema the models describe, and every downgrade
gives back exactly the schema its upgrade started from (an operator stepping back one
release gets the tables, columns, indexes and keys that release knew)."""
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from imgstore.db.engine import SCHEMA_HEAD
from imgstore.db.models import Base
from imgstore.db.schema import alembic_config

# SQLite reflects an index of ``name COLLATE NOCASE`` as one of ``name``, so autogenerate
# sees these expression indexes as removed and added again; they are checked by their SQL
_NOCASE_INDEXES = {"ix_backup_storage_name_nocase", "ix_image_name_nocase"}


def schema(url: str) -> dict[str, Any]:
    """The schema as SQLAlchemy reflects it, table by table, in a form that compares equal
    whatever order or quoting SQLite's table rebuilds (batch migrations) wrote it in.
    Alembic's own version table is left out: it says where we are, not what we have."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            out = {}
            for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
                out[table] = {
                    "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                                for c in insp.get_columns(table)],
                    "primary key": insp.get_pk_constraint(table)["constrained_columns"],
                    "foreign keys": sorted(
                        (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]),
                         str(sorted((fk.get("options") or {}).items())))
                        for fk in insp.get_foreign_keys(table)),
                    "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
                    "indexes": sorted((i["name"], tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                                      for i in insp.get_indexes(table)),
                }
            # expression indexes (COLLATE NOCASE) reflect without their expression: their SQL
            out["index sql"] = sorted(conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").all())
            return out
    finally:
        engine.dispose()


def revisions(cfg: Config) -> list[str]:
    """Every revision id, oldest first."""
    return [s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions("base", "heads")][::-1]


def test_migrations_match_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    command.upgrade(alembic_config(url), "head")
    with create_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        nocase = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE name LIKE '%nocase'").all()
    assert [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name in _NOCASE_INDEXES)] == []
    assert {name for name, sql in nocase if sql.endswith("(name COLLATE NOCASE)")} == _NOCASE_INDEXES


def test_every_downgrade_gives_back_the_schema_before_its_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    before = schema(url)
    assert before == {"index sql": []}
    for revision in revisions(cfg):
        command.upgrade(cfg, revision)
        after = schema(url)
        assert after != before, f"{revision} changes nothing"
        command.downgrade(cfg, "-1")
        assert schema(url) == before, f"the downgrade of {revision} does not give back the schema before it"
        command.upgrade(cfg, revision)
        assert schema(url) == after, f"{revision} upgrades to another schema the second time"
        before = after


def test_migrations_downgrade_to_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    assert len(schema(url)) > 5
    command.downgrade(cfg, "base")
    assert schema(url) == {"index sql": []}, "base is an empty database"
    with create_engine(url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 0


def test_the_schema_head_the_engine_knows_is_alembics() -> None:
    """A database at SCHEMA_HEAD is not migrated (Alembic is not even loaded): a new
    migration must move SCHEMA_HEAD with it, or no node would ever apply it."""
    from imgstore.db import schema
    from imgstore.db.engine import SCHEMA_HEAD

    assert SCHEMA_HEAD == schema.head()


def _sqlite_revision(path: Path) -> str | None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def test_a_sqlite_node_loads_neither_alembic_nor_psycopg_nor_postgresql_even_when_it_migrates(
        tmp_path: Path) -> None:
    """Alembic with Mako (and the SQLAlchemy dialects it imports), psycopg and PostgreSQL's
    dialect stay resident once imported; a SQLite node needs none of them, not even at its
    first start, whose migration runs in a child process (engine.migrate)."""
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path}/imgstore.db"
    probe = (
        "import asyncio, sys\n"
        "import imgstore.app, imgstore.cli.commands, imgstore.lifecycle  # what a server loads\n"
        "from imgstore.db.engine import create_engine, migrate\n"
        "async def main():\n"
        "    e = create_engine(sys.argv[1])\n"
        "    await migrate(e)\n"
        "    await e.dispose()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('alembic', 'mako', 'psycopg', 'sqlalchemy.dialects.postgresql') "
        "if m in sys.modules))\n"
    )
    for start in ("first", "again"):
        out = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]", (start, out.stdout)
        assert _sqlite_revision(tmp_path / "imgstore.db") == SCHEMA_HEAD, start


def test_a_failed_migration_fails_the_start_and_says_why(tmp_path: Path, capfd: Any) -> None:
    """The migration child's failure is the start's (MigrationFailed), and its reason is
    in the log as a JSON line like the server's own."""
    import asyncio
    import json
    import sqlite3

    import pytest

    from imgstore.db.engine import MigrationFailed, create_engine, migrate

    path = tmp_path / "imgstore.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999')")  # a revision no migration knows

    async def start() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    with pytest.raises(MigrationFailed):
        asyncio.run(start())
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["msg"] == "the schema migration failed"]
    assert failed and "9999" in json.dumps(failed[0])
