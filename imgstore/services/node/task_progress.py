"""Progress of long APIs (ZStack's GetTaskProgress), kept in the database.

A running AddImage reports how far its bytes got; ``GET /task-progresses/{apiId}`` reads
it on any node, while the job runs and after. ``content`` is the percentage as a string,
as ZStack's agents report it; ``opaque`` carries the figures behind it (bytes done and
expected, the stage). Writes are throttled to one per :data:`WRITE_EVERY` seconds per
task, so a fast stream costs the database next to nothing.
"""
from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import delete, select

from imgstore.db.models import TaskProgress
from imgstore.services.node.runtime import Runtime

PROGRESS, TASK = "Progress", "Task"
WRITE_EVERY = 1.0  # seconds between two writes of one task's progress


def _now_ms() -> int:
    return int(time.time() * 1000)


class ProgressReporter:
    """The progress of one task of one API call, written as it changes."""

    def __init__(self, rt: Runtime, api_id: str, task_uuid: str, task_name: str,
                 arguments: dict[str, Any] | None = None) -> None:
        self._rt = rt
        self.api_id = api_id
        self.task_uuid = task_uuid
        self.task_name = task_name
        self._arguments = json.dumps(arguments) if arguments is not None else None
        self._last_write = 0.0
        self.percent = 0
        self.opaque: dict[str, Any] = {}

    def new_row(self, **opaque: Any) -> TaskProgress:
        """The task's first report (0 %), for the caller to store with the rows it makes."""
        self.opaque = dict(opaque)
        self._last_write = time.monotonic()
        return TaskProgress(
            api_id=self.api_id, task_uuid=self.task_uuid, task_name=self.task_name,
            type=PROGRESS, content="0", arguments=self._arguments,
            opaque=json.dumps(self.opaque), time=_now_ms(),
        )

    async def start(self, **opaque: Any) -> None:
        """Record the task at 0 %, replacing what an earlier run under this id left."""
        row = self.new_row(**opaque)
        async with self._rt.db() as db:
            await db.execute(delete(TaskProgress).where(
                TaskProgress.api_id == self.api_id, TaskProgress.task_uuid == self.task_uuid))
            db.add(row)
            await db.commit()

    async def update(self, percent: int, *, force: bool = False, **opaque: Any) -> None:
        """Note the new figures; write them if the last write is old enough (or ``force``)."""
        self.percent = max(0, min(100, int(percent)))
        self.opaque.update(opaque)
        if force or time.monotonic() - self._last_write >= WRITE_EVERY:
            await self._write()

    async def _write(self) -> None:
        self._last_write = time.monotonic()
        async with self._rt.db() as db:
            row = await db.scalar(select(TaskProgress).where(
                TaskProgress.api_id == self.api_id, TaskProgress.task_uuid == self.task_uuid))
            if row is None:
                return
            row.content = str(self.percent)
            row.opaque = json.dumps(self.opaque)
            row.time = _now_ms()
            await db.commit()


async def progress_of(rt: Runtime, api_id: str, all_tasks: bool = False) -> list[TaskProgress]:
    """GetTaskProgress: the latest report of the API call, or every task's with ``all``.
    An unknown (or long finished) call has none."""
    async with rt.db() as db:
        rows = list(await db.scalars(
            select(TaskProgress).where(TaskProgress.api_id == api_id)
            .order_by(TaskProgress.time.desc(), TaskProgress.id.desc())
        ))
    return rows if all_tasks else rows[:1]


def opaque_of(row: TaskProgress) -> dict[str, Any] | None:
    return json.loads(row.opaque) if row.opaque else None


async def prune(rt: Runtime, older_than_seconds: float) -> None:
    """Forget reports older than the retention of finished jobs."""
    cutoff = _now_ms() - int(older_than_seconds * 1000)
    async with rt.db() as db:
        await db.execute(delete(TaskProgress).where(TaskProgress.time < cutoff))
        await db.commit()
