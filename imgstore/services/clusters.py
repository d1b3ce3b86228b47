"""librados handles of the storages this node serves, and Ceph errors as ZStack errors."""
from __future__ import annotations

import asyncio

from imgstore import ceph
from imgstore.crypto import SecretBox
from imgstore.db.models import CephBackupStorage
from imgstore.errors import INVALID_ARGUMENT, OPERATION_ERROR, ApiError

# How each Ceph failure reads to a client: (status, what it means for the operator).
_STATUS: dict[type[ceph.CephError], int] = {
    ceph.MonUrlError: 400,
    ceph.InvalidName: 400,
    ceph.SshAuthFailed: 400,
    ceph.CephToolsMissing: 400,
    ceph.PoolNotFound: 400,
    ceph.SshUnreachable: 503,
    ceph.CephTimeout: 503,
    ceph.ClusterUnreachable: 503,
    ceph.CephPermissionDenied: 503,
    ceph.CephCommandFailed: 503,
}


def ceph_error(e: ceph.CephError, host: str | None = None) -> ApiError:
    """A Ceph failure as SYS.1006 (SYS.1007 for bad input), naming the mon host."""
    status = next((s for t, s in _STATUS.items() if isinstance(e, t)), 503)
    where = host or getattr(e, "host", None)
    text = f"mon[{where}]: {e}" if where else str(e)
    kind = INVALID_ARGUMENT if isinstance(e, (ceph.MonUrlError, ceph.InvalidName)) else OPERATION_ERROR
    return ApiError(kind, text, status=status, opaque={"cephError": type(e).__name__})


def is_ceph_error(e: ApiError, kind: type[ceph.CephError]) -> bool:
    """Was this ApiError made from a Ceph failure of ``kind``?"""
    return bool(e.opaque) and e.opaque.get("cephError") == kind.__name__


def mon_host_of(row: CephBackupStorage) -> str:
    """The librados ``mon_host`` of a storage: every known mon, connected ones first."""
    mons = sorted(row.mons, key=lambda m: m.status != "Connected")
    return ",".join(m.mon_host or f"v1:{m.mon_addr or m.hostname}:{m.mon_port}" for m in mons)


class ClusterRegistry:
    """One connected ``ceph.Cluster`` per storage, made on first use and kept.

    A handle is remade when the storage's mons or key change, so a reconnect after
    an operator fixes the mon list takes effect at once.
    """

    def __init__(self, secrets: SecretBox, timeout: float) -> None:
        self._secrets = secrets
        self._timeout = timeout
        self._clusters: dict[str, tuple[tuple[str, str], ceph.Cluster]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, row: CephBackupStorage) -> ceph.Cluster:
        if not row.ceph_key or not row.ceph_client:
            raise ApiError(
                OPERATION_ERROR,
                f"backup storage[uuid:{row.uuid}] has no cephx key yet; reconnect it",
                status=409,
            )
        identity = (mon_host_of(row), row.ceph_key)
        async with self._locks.setdefault(row.uuid, asyncio.Lock()):
            known = self._clusters.get(row.uuid)
            if known and known[0] == identity:
                return known[1]
            if known:
                await known[1].close()
                del self._clusters[row.uuid]
            cluster = ceph.Cluster(
                identity[0], row.ceph_client, self._secrets.open(row.ceph_key), self._timeout
            )
            try:
                await cluster.connect()
            except ceph.CephError as e:
                await cluster.close()
                raise ceph_error(e) from None
            self._clusters[row.uuid] = (identity, cluster)
            return cluster

    async def adopt(self, uuid: str, identity: tuple[str, str], cluster: ceph.Cluster) -> None:
        """Keep a handle an onboarding already connected."""
        old = self._clusters.pop(uuid, None)
        if old:
            await old[1].close()
        self._clusters[uuid] = (identity, cluster)

    async def forget(self, uuid: str) -> None:
        known = self._clusters.pop(uuid, None)
        self._locks.pop(uuid, None)
        if known:
            await known[1].close()

    async def close_all(self) -> None:
        for uuid in list(self._clusters):
            await self.forget(uuid)
