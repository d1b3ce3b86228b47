"""Everything a node holds while it runs: the resources (``Runtime``: settings, database,
secrets, jobs, clusters, row locks, storage events) and what it runs and keeps in memory
(``Node``: its workers and the registries of the work in flight).

Nothing of a node's state is a module global: two runtimes in one process (a bench, a
test) share nothing but the code.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imgstore.config import Settings
from imgstore.crypto import SecretBox
from imgstore.db.changes import ChangeWatch, watch
from imgstore.db.engine import create_engine, migrate, sessionmaker
from imgstore.db.reads import Reads
from imgstore.services.node.events import StorageEvents
from imgstore.services.node.handles import ClusterRegistry
from imgstore.services.node.jobs import JobRunner
from imgstore.services.node.locking import RowLocks
from imgstore.services.node.login_guard import LoginGuard
from imgstore.services.node.refusal_budget import RefusalBudget
from imgstore.services.node.tasks import Tasks

if TYPE_CHECKING:  # the workers are of the packages above this one; lifecycle.start makes them
    from imgstore.db.models import Image
    from imgstore.services.health.tracker import Tracker
    from imgstore.services.images.deletion import Expunger
    from imgstore.services.node.membership import Membership

log = logging.getLogger(__name__)


@dataclass
class Node:
    """What this node runs (its workers, set by ``lifecycle.start``) and the registries of
    the work it has in flight, each used by one module only (named beside it)."""

    tracker: Tracker | None = None  # health/tracker: pings every storage it holds a lease on
    membership: Membership | None = None  # node/membership: heartbeat, leases, dead nodes' leftovers
    expunger: Expunger | None = None  # images/deletion: expunges and settles interrupted adds
    downloads: Tasks[Image] = field(default_factory=Tasks)  # images/download: AddImage downloads, by image
    imports: Tasks[list[str]] = field(default_factory=Tasks)  # images/metadata: importImages, by storage
    streams: Counter[str] = field(default_factory=Counter)  # images/export: downloads served now, by image
    reconnects: Counter[str] = field(default_factory=Counter)  # health/connection: Reconnects, by storage


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    secrets: SecretBox
    jobs: JobRunner
    clusters: ClusterRegistry
    node_id: str
    changes: ChangeWatch  # the database's version: replies kept until it moves (api/reply_cache.py)
    login_guard: LoginGuard  # password hashing off the loop, failed logins throttled
    refusals: RefusalBudget  # how many refused requests become failed jobs (api/refused_jobs.py)
    reads: Reads  # plain reads on the driver, for queries (services/catalog/queries.py)
    metrics: Any = None  # imgstore.metrics.Metrics of the app serving this node
    events: StorageEvents = field(default_factory=StorageEvents)  # wired by lifecycle.start
    locks: RowLocks = field(default_factory=RowLocks)  # this node's lock per row (node/locking.py)
    node: Node = field(default_factory=Node)

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        """The database (migrated), the secret box and the registries; nothing running."""
        private_data_dir(settings.data_dir)
        engine = create_engine(settings.database_url())
        await migrate(engine)
        db = sessionmaker(engine)
        node_id = settings.node_id or _default_node_id(settings)
        secrets = SecretBox.from_settings(settings.secret_key, settings.data_dir)
        rt = cls(
            settings=settings,
            engine=engine,
            db=db,
            secrets=secrets,
            jobs=JobRunner(db, node_id, settings.job_retention, secrets, settings.refused_job_retention),
            clusters=ClusterRegistry(secrets.open, settings.ceph_timeout),
            node_id=node_id,
            changes=watch(engine.url),
            login_guard=LoginGuard(settings),
            refusals=RefusalBudget(settings),
            reads=Reads(engine),
        )
        return rt

    async def close(self) -> None:
        await self.jobs.drain()
        await self.clusters.close_all()
        await self.changes.close()
        self.reads.close()
        await self.engine.dispose()
        self.login_guard.close()


def private_data_dir(path: Path) -> None:
    """Make the data dir 0700 and its files 0600, and what this process creates from now
    on private too (umask 077): the SQLite database and its journals, the key file, the
    generated admin password, staged images. An older version left them world-readable;
    a data dir this user may not change is only warned about."""
    os.umask(0o077)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path.chmod(0o700)
        for child in path.iterdir():
            if child.is_file() and not child.is_symlink() and child.stat().st_mode & 0o077:
                child.chmod(0o600)
    except PermissionError as e:
        log.warning("cannot make the data dir %s private (0700, files 0600): %s", path, e)


def _default_node_id(settings: Settings) -> str:
    """Stable across restarts of the same node (so it can recover its own jobs)."""
    path = settings.data_dir / "node-id"
    if path.exists():
        return path.read_text().strip()
    node = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    path.write_text(node + "\n")
    return node
