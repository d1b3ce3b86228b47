"""Async API jobs: stored in the database so a poll works on any node and after a restart.

A job runs as a task of the node that accepted it. Its final answer (the JSON body of
a 200, or the ErrorCode of a failure) is written to its row; a node that restarts marks
the jobs it was running as failed, since their tasks died with it.

A job's answer may hold a bearer secret (the upload URL of an AddImage(upload://), the
export URL of ExportImageFromBackupStorage): it is stored sealed, and a poll without a
session sees it through :func:`mask_tokens`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imgstore.crypto import SecretBox
from imgstore.db.models import ApiJob
from imgstore.errors import INTERNAL, INVALID_ARGUMENT, ApiError
from imgstore.wire.dates import utcnow
from imgstore.wire.enums import JobState
from imgstore.wire.masking import without_tokens

log = logging.getLogger(__name__)

PROCESSING, SUCCEEDED, FAILED = JobState.PROCESSING, JobState.SUCCEEDED, JobState.FAILED
# a request refused before its job started (api/refused_jobs.py): polled as a failure,
# forgotten after ``refused_retention`` seconds
REFUSED = JobState.REFUSED
_JOB_UUID = re.compile(r"^[0-9a-f]{32}$")

Work = Callable[[], Awaitable[dict[str, Any]]]


def check_job_uuid(value: str) -> str:
    value = value.strip().lower()
    if not _JOB_UUID.fullmatch(value):
        raise ApiError(
            INVALID_ARGUMENT,
            f"invalid header X-Job-UUID[{value}]: a job uuid is 32 hex characters without dashes",
        )
    return value


def mask_tokens(value: Any) -> Any:
    """``value`` (a job's answer) with the ``token=`` of every URL in it masked: what a
    poll without a session may see. The shape stays ZStack's; the URL just cannot be used."""
    if isinstance(value, str):
        return without_tokens(value)
    if isinstance(value, dict):
        return {k: mask_tokens(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_tokens(v) for v in value]
    return value


class JobRunner:
    """Runs the async APIs of one node."""

    def __init__(self, db: async_sessionmaker[AsyncSession], node: str, retention: int,
                 box: SecretBox, refused_retention: int = 120) -> None:
        self._db = db
        self._box = box
        self._node = node
        self._retention = retention
        self._refused_retention = refused_retention
        self._refused_pruned = 0.0  # monotonic time of the last pruning of refused jobs
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, job_uuid: str, api_name: str, work: Work) -> None:
        """Record the job, then run ``work`` in the background. A reused uuid is refused."""
        await self._insert(ApiJob(uuid=job_uuid, api_name=api_name, node=self._node))
        task = asyncio.create_task(self._run(job_uuid, api_name, work), name=f"job-{job_uuid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def refuse(self, job_uuid: str, api_name: str, error: ApiError) -> None:
        """Record a job that failed before it started: one row, finished, no task. Such
        rows are forgotten after ``refused_retention`` seconds (pruned here, at most once
        a second, so the table holds no more than the callers' bound allows)."""
        now = utcnow()
        await self._insert(ApiJob(uuid=job_uuid, api_name=api_name, node=self._node, state=REFUSED,
                                  result=json.dumps(error.body()), create_date=now, finish_date=now))
        if time.monotonic() - self._refused_pruned >= 1.0:
            self._refused_pruned = time.monotonic()
            async with self._db() as db:
                await db.execute(delete(ApiJob).where(ApiJob.state == REFUSED,
                                                      ApiJob.finish_date < self._refused_horizon()))
                await db.commit()

    def _refused_horizon(self) -> datetime:
        return utcnow() - timedelta(seconds=self._refused_retention)

    async def _insert(self, job: ApiJob) -> None:
        async with self._db() as db:
            db.add(job)
            try:
                await db.commit()
            except IntegrityError:
                raise ApiError(
                    INVALID_ARGUMENT, f"duplicate X-Job-UUID[{job.uuid}]: a job with this uuid exists"
                ) from None

    async def _run(self, job_uuid: str, api_name: str, work: Work) -> None:
        try:
            body = await work()
            state = SUCCEEDED
        except ApiError as e:
            body, state = e.body(), FAILED
        except asyncio.CancelledError:
            body, state = ApiError(INTERNAL, "the job was cancelled: the server stopped").body(), FAILED
        except Exception:
            log.exception("job %s (%s) failed unexpectedly", job_uuid, api_name)
            body, state = ApiError(INTERNAL, f"{api_name} failed unexpectedly").body(), FAILED
        await self._finish(job_uuid, state, body)

    async def _finish(self, job_uuid: str, state: str, body: dict[str, Any]) -> None:
        async with self._db() as db:
            await db.execute(
                update(ApiJob)
                .where(ApiJob.uuid == job_uuid)
                .values(state=state, result=self._box.seal(json.dumps(body)), finish_date=utcnow())
            )
            await db.commit()

    def answer(self, job: ApiJob) -> dict[str, Any]:
        """A finished job's answer: sealed by :meth:`_finish`, in clear when another path
        (a restart, a dead node) wrote a bare error."""
        stored = job.result or "{}"
        if not stored.startswith("{"):
            stored = self._box.open(stored)
        answer: dict[str, Any] = json.loads(stored)
        return answer

    async def get(self, job_uuid: str) -> ApiJob | None:
        """The job, or None when unknown or a refused job past its retention."""
        async with self._db() as db:
            job = await db.get(ApiJob, job_uuid)
        if (job is not None and job.state == REFUSED and job.finish_date is not None
                and job.finish_date < self._refused_horizon()):
            return None
        return job

    async def recover(self) -> None:
        """Fail the jobs this node left running, and forget expired ones."""
        interrupted = ApiError(
            INTERNAL, "the job was interrupted: the server restarted before it finished"
        ).body()
        async with self._db() as db:
            await db.execute(
                update(ApiJob)
                .where(ApiJob.state == PROCESSING, ApiJob.node == self._node)
                .values(state=FAILED, result=json.dumps(interrupted), finish_date=utcnow())
            )
            await db.execute(
                delete(ApiJob).where(
                    ApiJob.finish_date < utcnow() - timedelta(seconds=self._retention)
                )
            )
            await db.execute(delete(ApiJob).where(ApiJob.state == REFUSED,
                                                  ApiJob.finish_date < self._refused_horizon()))
            await db.commit()

    async def drain(self, timeout: float = 5.0) -> None:
        """On shutdown: give running jobs a moment, then cancel them (their rows say so)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
