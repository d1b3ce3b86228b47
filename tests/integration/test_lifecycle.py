"""A node's start brings the database it is given to the newest schema (lifecycle.start ->
Runtime.open -> db.engine.migrate).

Test servers otherwise start on a copy of a database already at head (tests/conftest.py),
so this is where the migrations a real start runs are seen to run."""
from __future__ import annotations

import signal
import time

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from imgstore.db.schema import alembic_config
from tests.conftest import TEST_DB, Server, create_pg_database


def _given_database(server: Server) -> str:
    """A database of the server's own, named in its settings (so no copy at head replaces
    it), as a plain (synchronous) SQLAlchemy URL."""
    if TEST_DB == "postgresql":
        server.env["IMGSTORE_DB_URL"] = create_pg_database()
        return server.env["IMGSTORE_DB_URL"].replace("postgresql://", "postgresql+psycopg://")
    server.env["IMGSTORE_DB_URL"] = f"sqlite:///{server.data_dir / 'imgstore.db'}"
    return server.env["IMGSTORE_DB_URL"]


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("behind", ["empty", "one release behind"])
def test_a_server_migrates_the_database_it_is_given(fresh_server: Server, behind: str) -> None:
    url = _given_database(fresh_server)
    cfg = alembic_config(url)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    if behind != "empty":
        previous = ScriptDirectory.from_config(cfg).get_revision(head).down_revision
        assert isinstance(previous, str)
        command.upgrade(cfg, previous)
        assert _revision(url) == previous
    api = fresh_server.start().login()
    assert api.get("/zones").status_code == 200
    api.close()
    assert _revision(url) == head


def test_a_server_asked_with_sigusr1_logs_where_it_waits(server: Server) -> None:
    """``kill -USR1``: every task and thread's stack into the log, the server going on
    (what tests/servers.py asks of a server that does not stop)."""
    before = len(server.log())
    assert server.proc is not None
    server.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "thread MainThread waits" not in server.log()[before:] and time.monotonic() < deadline:
        time.sleep(0.1)
    dumped = server.log()[before:]
    assert "task " in dumped and "thread MainThread waits" in dumped, dumped[-2000:]
    assert server.login().get("/zones").status_code == 200
