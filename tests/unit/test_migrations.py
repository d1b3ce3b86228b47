"""The Alembic migrations build exactly the schema the models describe."""
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from imgstore.db.engine import alembic_config
from imgstore.db.models import Base


# SQLite reflects an index of ``name COLLATE NOCASE`` as one of ``name``, so autogenerate
# sees these expression indexes as removed and added again; they are checked by their SQL
_NOCASE_INDEXES = {"ix_backup_storage_name_nocase", "ix_image_name_nocase"}


def test_migrations_match_the_models(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    command.upgrade(alembic_config(url), "head")
    with create_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        nocase = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE name LIKE '%nocase'").all()
    assert [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name in _NOCASE_INDEXES)] == []
    assert {name for name, sql in nocase if sql.endswith("(name COLLATE NOCASE)")} == _NOCASE_INDEXES


def test_migrations_downgrade_to_nothing(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
