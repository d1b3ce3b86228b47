"""Everything a node holds while it runs: settings, database, secrets, jobs, clusters."""
from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imgstore.config import Settings
from imgstore.crypto import SecretBox
from imgstore.db.changes import ChangeWatch, watch
from imgstore.db.engine import create_engine, migrate, sessionmaker
from imgstore.services.clusters import ClusterRegistry
from imgstore.services.jobs import JobRunner

log = logging.getLogger(__name__)


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
    tracker: Any = None  # services.tracker.Tracker once the node runs
    membership: Any = None  # services.nodes.Membership (heartbeat, leases) once the node runs
    metrics: Any = None  # imgstore.metrics.Metrics of the app serving this node

    @classmethod
    async def open(cls, settings: Settings) -> "Runtime":
        """The database (migrated), the secret box and the registries; nothing running."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
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
            jobs=JobRunner(db, node_id, settings.job_retention),
            clusters=ClusterRegistry(secrets.open, settings.ceph_timeout),
            node_id=node_id,
            changes=watch(engine.url),
        )
        return rt

    async def close(self) -> None:
        await self.jobs.drain()
        await self.clusters.close_all()
        await self.changes.close()
        await self.engine.dispose()


def _default_node_id(settings: Settings) -> str:
    """Stable across restarts of the same node (so it can recover its own jobs)."""
    path = settings.data_dir / "node-id"
    if path.exists():
        return path.read_text().strip()
    node = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    path.write_text(node + "\n")
    return node
