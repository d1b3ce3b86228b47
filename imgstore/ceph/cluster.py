"""A librados handle per storage, every call bounded (DESIGN decision 5).

librados blocks, and ignores ``connect(timeout=)``: the timeouts are set as config
options before connecting (``client_mount_timeout``, ``rados_mon_op_timeout``,
``rados_osd_op_timeout``), every blocking call runs in a small thread pool owned by the
:class:`Cluster` (never on the event loop), and each await is wrapped in
``asyncio.wait_for`` as a last resort. A dead mon therefore gives an error in about
``timeout`` seconds, never a hung request.

No ceph.conf is read: the handle is built from the mons' ``mon_host`` strings (from
``MonShell.facts``) and the key minted by ``MonShell.get_or_create_key``.

Calls go through :func:`imgstore.ceph._calls.call`, which translates rados exceptions and
negative return codes into ``imgstore.ceph.exceptions``; their messages never carry the key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import json
import re
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import rados

from imgstore.ceph._calls import call, from_errno, translate
from imgstore.ceph.capacity import Capacity, PoolLayout, compute_capacity, osds_of_rule, pool_layout
from imgstore.ceph.exceptions import CephError, CephPermissionDenied, CephTimeout, ClusterUnreachable
from imgstore.ceph.recent import Recent

__all__ = ["Capacity", "Cluster", "Health"]

T = TypeVar("T")
_WORKERS = 4
_GRACE = 1.5  # seconds wait_for allows beyond librados' own timeouts
_PROBE_DATA = b"imgstore ping\n"
_LAYOUT_SECONDS = 30.0  # how long capacity trusts a pool's layout (see Cluster.capacity)
_SHARED_SECONDS = 1.0  # how long a ping reuses what another storage's ping heard of the cluster

# Shared by every handle of this process, keyed by the cluster's fsid (see recent.py).
_LAYOUTS: Recent[tuple[PoolLayout, Any]] = Recent(_LAYOUT_SECONDS)
_HEARD: Recent[Any] = Recent(_SHARED_SECONDS)


@dataclass(frozen=True)
class Health:
    """What :meth:`Cluster.health` found."""

    quorum: frozenset[str]  # ``ip:port`` of every address of the mons in quorum
    capacity: Capacity | None  # None when the write test failed: see pool_error
    pool_error: CephError | None


class Cluster:
    """One librados handle per storage, every call bounded (DESIGN decision 5)."""

    def __init__(self, mon_host: str, client: str, key: str, timeout: float = 10.0) -> None:
        self._mon_host = mon_host
        self._client = client
        self._key = key
        self._timeout = float(timeout)
        self._executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix=f"rados-{client}")
        self._rados: Any = None
        self._conf: dict[str, str] = {}
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:  # no key here, ever
        return f"Cluster(mon_host={self._mon_host!r}, client={self._client!r})"

    @property
    def mon_host(self) -> str:
        """The librados ``mon_host`` string the handle was made with; errors name it."""
        return self._mon_host

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The bounded thread pool of this handle, for image I/O to share."""
        return self._executor

    @property
    def handle(self) -> Any:
        """The connected ``rados.Rados`` (for ``rbd`` code inside ``imgstore.ceph``)."""
        if self._rados is None:
            raise ClusterUnreachable("the cluster handle is not connected", self._mon_host)
        return self._rados

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Connect, or raise ClusterUnreachable / CephPermissionDenied within ~timeout."""
        async with self._connecting:
            if self._rados is None:
                self._rados = await self._connect()

    async def _connect(self) -> Any:
        if not _is_cephx_key(self._key):
            # librados prints a key it cannot decode to stderr: refuse it before.
            raise CephPermissionDenied(
                f"the cephx key of client.{self._client} is malformed", self._mon_host
            )
        t = str(max(1, round(self._timeout)))
        conf = {
            "mon_host": self._mon_host,
            "key": self._key,
            "client_mount_timeout": t,
            "rados_mon_op_timeout": t,
            "rados_osd_op_timeout": t,
            # The library defaults, stated: our exceptions carry the reasons. librados
            # still prints a few level -1 lines (auth, msgr) to stderr whatever these say.
            "log_to_stderr": "false",
            "err_to_stderr": "false",
            # imgstore streams whole images once: librbd's write-back cache only adds a
            # copy and memory (measured: ~80 MiB less RSS during a 1 GiB upload without it)
            "rbd_cache": "false",
            # librbd writes an aio_write's bytes from the caller's buffer instead of a copy
            # of it, and completes the write only once it has let go of them: rbd/_common.aio
            # holds the buffer that long, and the writer lends or reuses a buffer only after
            # its write completed (rbd/writer.py). A copy less per write in flight.
            "rbd_disable_zero_copy_writes": "false",
        }

        self._conf = conf

        try:
            return await self._call(self._new_handle, "connect")
        except CephTimeout:
            if await _any_mon_listens(self._mon_host):
                # the mons are there but let the login time out: what they do with a
                # key they do not know (deleted or revoked)
                raise CephPermissionDenied(
                    f"the ceph monitors of [{self._mon_host}] answer but refuse the cephx key of "
                    f"client.{self._client} (revoked or deleted?)",
                    self._mon_host,
                ) from None
            raise ClusterUnreachable(
                f"cannot reach any ceph monitor of [{self._mon_host}] within {self._timeout:g}s",
                self._mon_host,
            ) from None

    def _new_handle(self) -> Any:
        handle = rados.Rados(rados_id=self._client, conffile=None, conf=self._conf)
        try:
            handle.connect()
        except BaseException:
            handle.shutdown()
            raise
        return handle

    async def check_key(self) -> None:
        """Log in afresh with the key, then log out.

        A connected handle keeps working on its cephx tickets for up to an hour after
        its key is revoked; only a new login tells. CephPermissionDenied when refused.
        A refused login looks like a timeout, so the mons are asked through this handle
        first: when they do not answer, that is what is raised, not a refusal."""
        await self.connect()
        await self._mon_json("quorum_status")

        def login() -> None:
            self._new_handle().shutdown()

        try:
            await self._call(login, "log in with the cephx key")
        except CephTimeout:
            # a mon answers a deleted entity by letting the login time out; callers
            # ask only once the mons answered them (quorum), so this is the key
            raise CephPermissionDenied(
                f"the cephx key of client.{self._client} was refused (revoked or deleted?)", self._mon_host
            ) from None

    async def close(self) -> None:
        """Stop the thread pool, then shut the handle down; safe to call twice.

        No call starts once this began (``call`` finds the pool shut down:
        ClusterUnreachable). A call already inside librados in one of the pool's threads
        (a Delete or a Reconnect replaces a handle under short calls) ends on librados'
        own op timeouts, and is waited for: shutting the handle down under it would free
        memory it still uses, and the process dies."""
        handle, self._rados = self._rados, None
        self._executor.shutdown(wait=False, cancel_futures=True)
        if handle is not None:
            await asyncio.to_thread(self._shut_down_after_calls, handle)

    def _shut_down_after_calls(self, handle: Any) -> None:
        self._executor.shutdown(wait=True)
        with contextlib.suppress(rados.Error):  # nothing is left to do with it either way
            handle.shutdown()

    # ------------------------------------------------------------------ calls

    async def fsid(self) -> str:
        return str(await self._call(lambda: self.handle.get_fsid(), "get fsid"))

    async def pool_exists(self, pool: str) -> bool:
        return bool(await self._call(lambda: self.handle.pool_exists(pool), f"look up pool {pool}"))

    async def capacity(self, pool: str) -> Capacity:
        """The storage's capacity for ``pool`` (see ``capacity.py``); PoolNotFound if gone."""
        return await self._call(lambda: self._capacity(pool), f"read the capacity of pool {pool}")

    async def health(self, pool: str, object_name: str) -> Health:
        """The tracker's ping in one trip to the thread pool (it runs for every storage
        every interval): the mons in quorum, then a small object written to ``pool`` and
        removed (ZStack's ping write test) and the pool's capacity.

        The write and the removal go as one compound op: one round trip to the OSD,
        refused like a plain write by a read-only key or a full pool. What the cluster
        says of itself (quorum, usage) may come from another storage's ping on the same
        cluster within the last ``_SHARED_SECONDS``; the write test is always this
        storage's own, through its own handle.

        Raises when the mons do not answer. A failure past them is ``Health.pool_error``,
        ZStack's ``UnableToCreateFile``: CephTimeout when the OSDs do not answer,
        CephPermissionDenied when the key may not write the pool, PoolNotFound.
        """

        def check() -> Health:
            quorum = _quorum_of(self._mon_json_heard("quorum_status"))
            try:
                self._write_and_remove(pool, object_name)
                return Health(quorum, self._capacity(pool, self._mon_json_heard), None)
            except rados.Error as e:
                return Health(quorum, None, translate(e, f"write test object to pool {pool}", self, pool))
            except CephError as e:
                return Health(quorum, None, e)

        return await self._call(check, "ceph quorum_status")

    def _write_and_remove(self, pool: str, object_name: str) -> None:
        ioctx = self.handle.open_ioctx(pool)
        try:
            op = ioctx.create_write_op()
            try:
                op.write_full(_PROBE_DATA)
                op.remove()
                ioctx.operate_write_op(op, object_name)
            finally:
                ioctx.release_write_op(op)
        finally:
            ioctx.close()

    def _capacity(self, pool: str, ask: Callable[[str], Any] | None = None) -> Capacity:
        """Blocking. The usage figures (``osd df``, ``df``) are asked with ``ask`` (by
        default afresh); the pool's layout and the OSDs under its crush rule (from ``osd
        dump``, the crush rules and ``osd tree``) are kept ``_LAYOUT_SECONDS`` per cluster:
        they change when an operator changes the cluster, and asking for them on every
        ping more than doubled its cost."""
        ask = ask or self._mon_json_now
        osd_df = ask("osd df")  # a mgr command: the mon proxies it (see ssh.rbd_client_caps)
        df = ask("df")
        layout, osds = _LAYOUTS.get((self.handle.get_fsid(), pool), lambda: self._layout(pool))
        return compute_capacity(layout, osds, osd_df, df)

    def _layout(self, pool: str) -> tuple[PoolLayout, Any]:
        layout = pool_layout(self._mon_json_now("osd dump"), pool)
        rules, tree = self._mon_json_now("osd crush rule dump"), self._mon_json_now("osd tree")
        osds = osds_of_rule(rules, tree, layout.crush_rule)
        return layout, osds

    # ------------------------------------------------------------------ plumbing

    async def _mon_json(self, prefix: str, **args: Any) -> Any:
        """Run a mon command with ``format=json`` and decode its output."""
        return await self._call(lambda: self._mon_json_now(prefix, **args), f"ceph {prefix}")

    def _mon_json_heard(self, prefix: str) -> Any:
        """Blocking ``_mon_json`` of a question about the whole cluster, whose answer
        any handle on it may have heard in the last ``_SHARED_SECONDS``."""
        return _HEARD.get((self.handle.get_fsid(), prefix), lambda: self._mon_json_now(prefix))

    def _mon_json_now(self, prefix: str, **args: Any) -> Any:
        """Blocking ``_mon_json``, for code already in the thread pool."""
        cmd = json.dumps({"prefix": prefix, "format": "json", **args})
        ret, out, outs = self.handle.mon_command(cmd, b"")
        if ret < 0:
            raise from_errno(-ret, f"ceph {prefix}: {outs.strip() or errno.errorcode.get(-ret, ret)}", self)
        return json.loads(out or b"null")

    async def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run blocking ``fn`` in the pool, bounded by the handle's timeout."""
        return await call(self, fn, what, timeout=self._timeout, grace=_GRACE)


def _quorum_of(status: dict[str, Any]) -> frozenset[str]:
    """``ip:port`` of every address (v1 and v2) of the mons in quorum, from ``quorum_status``."""
    ranks = set(status.get("quorum", []))
    out: set[str] = set()
    for mon in status.get("monmap", {}).get("mons", []):
        if mon.get("rank") not in ranks:
            continue
        for a in mon.get("public_addrs", {}).get("addrvec", []):
            out.add(str(a["addr"]).split("/", 1)[0])
        if mon.get("addr"):
            out.add(str(mon["addr"]).split("/", 1)[0])
    return frozenset(out)


def _mon_addresses(mon_host: str) -> list[tuple[str, int]]:
    """``(ip, port)`` of every address in a librados ``mon_host`` string."""
    out = []
    for part in re.split(r"[,\s\[\]]+", mon_host):
        part = re.sub(r"^v[12]:", "", part).split("/", 1)[0]
        host, _, port = part.rpartition(":")
        if host and port.isdigit():
            out.append((host, int(port)))
    return out


async def _any_mon_listens(mon_host: str, timeout: float = 1.0) -> bool:
    """Does any mon address accept a TCP connection? (Tells a dead mon from a refused key.)"""

    async def listens(host: str, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (TimeoutError, OSError):
            return False
        writer.close()
        return True

    results: list[bool] = await asyncio.gather(*(listens(h, p) for h, p in _mon_addresses(mon_host)))
    return any(results)


def _is_cephx_key(key: str) -> bool:
    """True if ``key`` decodes the way ceph's CryptoKey does (type, created, len, secret)."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return False
    if len(raw) < 12:
        return False
    kind: int
    length: int
    kind, _sec, _nsec, length = struct.unpack_from("<HIIH", raw)
    return kind != 0 and length == len(raw) - 12 and length > 0
