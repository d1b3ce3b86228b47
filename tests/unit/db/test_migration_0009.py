"""Migration 0009 (secrets at rest) on a database that holds secrets in clear, on SQLite
and PostgreSQL: sessions dropped, export URLs revoked, source URLs without credentials."""
from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine

from imgstore.db.schema import alembic_config

ROWS = [
    "INSERT INTO account (uuid, name, password_hash, type, create_date, last_op_date) "
    "VALUES ('a1', 'admin', 'x', 'Normal', '2026-01-01', '2026-01-01')",
    "INSERT INTO session (uuid, account_uuid, user_uuid, user_type, expired_date, create_date) "
    "VALUES ('0123456789abcdef0123456789abcdef', 'a1', 'a1', 'Account', '2099-01-01', '2026-01-01')",
    "INSERT INTO image (uuid, name, state, status, size, actual_size, url, media_type, type, format, "
    "system, virtio, create_date, last_op_date) VALUES ('i1', 'n', 'Enabled', 'Ready', 0, 0, "
    "'http://reader:s3cret@host:8000/disk.raw?x=1', 'RootVolumeTemplate', 'zstack', 'raw', false, true, "
    "'2026-01-01', '2026-01-01')",
    "INSERT INTO backup_storage (uuid, name, url, type, state, status, total_capacity, available_capacity, "
    "create_date, last_op_date) VALUES ('b1', 'bs', '/', 'Ceph', 'Enabled', 'Connected', 0, 0, "
    "'2026-01-01', '2026-01-01')",
    "INSERT INTO image_backup_storage_ref (image_uuid, backup_storage_uuid, install_path, status, "
    "export_url, export_token, create_date, last_op_date) VALUES ('i1', 'b1', 'ceph://p/i1', 'Ready', "
    "'http://imgstore/zstack/v1/exports/p/n-i1?token=clear', 'hash', '2026-01-01', '2026-01-01')",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("postgres_url")


def test_secrets_kept_in_clear_are_dropped_or_stripped(database: str) -> None:
    cfg = alembic_config(database)
    command.upgrade(cfg, "0008")
    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            for sql in ROWS:
                conn.exec_driver_sql(sql)
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM session").scalar() == 0
            assert conn.exec_driver_sql("SELECT url FROM image").scalar() == "http://host:8000/disk.raw?x=1"
            assert conn.exec_driver_sql(
                "SELECT export_url, export_token FROM image_backup_storage_ref").one() == (None, None)
        command.downgrade(cfg, "0008")
    finally:
        engine.dispose()
