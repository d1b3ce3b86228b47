"""What ``/metrics`` reports about storages and mons, read from the database at scrape time,
and :func:`count_image_bytes`, how services count the image bytes they move.

Two SELECTs of plain columns whatever the number of storages: no ORM objects, no
relationship loading, so a scrape of 10 000 storages stays cheap. The figures are what
the tracker last recorded; a scrape never talks to Ceph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select

from imgstore.db.models import BackupStorage, CephMon
from imgstore.services.node.runtime import Runtime

_BS = BackupStorage.__table__.c
_MON = CephMon.__table__.c


@dataclass(frozen=True)
class StorageFigures:
    uuid: str
    name: str
    type: str
    state: str
    status: str
    total_bytes: int
    available_bytes: int
    pool_available_bytes: int | None  # Ceph only
    pool_used_bytes: int | None


@dataclass(frozen=True)
class MonFigures:
    backup_storage_uuid: str
    hostname: str
    status: str


@dataclass(frozen=True)
class Figures:
    storages: list[StorageFigures]
    mons: list[MonFigures]


async def figures(rt: Runtime) -> Figures:
    """Every backup storage's capacity, state and status, and every mon's status."""
    async with rt.db() as db:
        storages = (await db.execute(select(
            _BS.uuid, _BS.name, _BS.type, _BS.state, _BS.status, _BS.total_capacity,
            _BS.available_capacity, _BS.pool_available_capacity, _BS.pool_used_capacity,
        ).order_by(_BS.uuid))).all()
        mons = (await db.execute(
            select(_MON.backup_storage_uuid, _MON.hostname, _MON.status).order_by(_MON.backup_storage_uuid)
        )).all()
    return Figures(
        storages=[StorageFigures(*row) for row in storages],
        mons=[MonFigures(*row) for row in mons],
    )


def count_image_bytes(rt: Runtime, direction: Literal["upload", "download", "export"], n: int) -> None:
    """Count ``n`` image bytes moved: ``upload`` (a client sent them), ``download`` (imgstore
    fetched them from a URL) or ``export`` (a client read them out). Call it per chunk as
    the bytes go. A runtime no app serves (scripts) has no metrics and counts nothing."""
    if rt.metrics is not None and n:
        rt.metrics.count_image_bytes(direction, n)
