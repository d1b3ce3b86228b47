"""The one Ceph call path (``imgstore.ceph._calls``): the executor hop, the time bound and
the errno map, through the three kinds of callers (a cluster's own calls, RADOS objects,
RBD images), with fake librados handles: fast, no Ceph.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import itertools
import json
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import rados
import rbd

from imgstore import ceph
from imgstore.ceph import _calls, objects
from imgstore.ceph import cluster as cluster_module

pytestmark = pytest.mark.anyio

MON_HOST = "v1:127.0.0.1:6789"
_FSIDS = itertools.count()


class Ioctx:
    """A pool's context whose every write raises ``error``."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.closed = False

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            raise self.error

    write_full = append = operate_write_op = _fail

    def create_write_op(self) -> Any:
        return type("Op", (), {"write_full": lambda *a: None, "remove": lambda *a: None})()

    def release_write_op(self, op: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Handle:
    """A ``rados.Rados`` that knows one pool, ``p``, and has a mon that answers."""

    def __init__(self, error: BaseException | None = None, mon_ret: int = 0) -> None:
        self.error = error
        self.mon_ret = mon_ret
        self.ioctx = Ioctx(error)
        self.fsid = f"fsid-{next(_FSIDS)}"

    def open_ioctx(self, pool: str) -> Ioctx:
        if pool != "p":
            raise rados.ObjectNotFound("[errno 2] RADOS object not found (error opening pool)", errno.ENOENT)
        return self.ioctx

    def mon_command(self, cmd: str, inbuf: bytes) -> tuple[int, bytes, str]:
        if self.mon_ret:
            return self.mon_ret, b"", ""
        status = {"quorum": [0], "monmap": {"mons": [{"rank": 0, "addr": "127.0.0.1:6789/0"}]}}
        return 0, json.dumps(status).encode(), ""

    def get_fsid(self) -> str:  # a cluster of its own: nothing heard by another test's handle
        return self.fsid

    # what Cluster.connect and close do with a rados.Rados
    def connect(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class Source:
    """A handle as ``imgstore.ceph`` takes it (the RadosSource protocol)."""

    mon_host = MON_HOST

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.executor = ThreadPoolExecutor(2)


def _key() -> str:
    secret = bytes(range(16))
    return base64.b64encode(struct.pack("<HIIH", 1, 0, 0, len(secret)) + secret).decode()


async def _cluster(monkeypatch: pytest.MonkeyPatch, handle: Handle) -> ceph.Cluster:
    monkeypatch.setattr(cluster_module.rados, "Rados", lambda **kwargs: handle)
    c = ceph.Cluster(MON_HOST, "imgstore", _key(), timeout=1.0)
    await c.connect()
    return c


# ------------------------------------------------------------------ one errno map

@pytest.mark.parametrize(("code", "kind"), [
    (errno.ENOSPC, ceph.ImageNoSpace),
    (errno.EDQUOT, ceph.ImageNoSpace),
    (errno.ETIMEDOUT, ceph.CephTimeout),
    (errno.EINTR, ceph.CephTimeout),
    (errno.EACCES, ceph.CephPermissionDenied),
    (errno.EPERM, ceph.CephPermissionDenied),
    (errno.ENOTCONN, ceph.ClusterUnreachable),
    (errno.ESHUTDOWN, ceph.ClusterUnreachable),
    (errno.ECONNREFUSED, ceph.ClusterUnreachable),
    (errno.EIO, ceph.CephCommandFailed),
    (0, ceph.CephCommandFailed),
])
def test_each_errno_is_one_error_of_the_ceph_layer(code: int, kind: type[ceph.CephError]) -> None:
    e = _calls.from_errno(code, "do something", Source(None))
    assert type(e) is kind
    assert e.host == MON_HOST


def test_enoent_names_what_the_call_was_about() -> None:
    src = Source(None)
    assert type(_calls.from_errno(errno.ENOENT, "read", src, "p", "img")) is ceph.ImageNotFound
    assert type(_calls.from_errno(errno.ENOENT, "list", src, "p")) is ceph.PoolNotFound
    assert type(_calls.from_errno(errno.ENOENT, "ceph osd df", src)) is ceph.CephCommandFailed


def test_a_failed_command_names_its_errno_once() -> None:
    assert str(_calls.from_errno(errno.EIO, "write object p/o failed", Source(None))) == \
        "write object p/o failed (EIO)"
    assert str(_calls.from_errno(errno.EINVAL, "ceph df: EINVAL", Source(None))) == "ceph df: EINVAL"


@pytest.mark.parametrize(("error", "kind"), [
    (rbd.ImageNotFound("no image", errno.ENOENT), ceph.ImageNotFound),
    (rbd.ImageExists("exists", errno.EEXIST), ceph.ImageExists),
    (rbd.ImageBusy("busy", errno.EBUSY), ceph.ImageBusy),
    (rbd.ImageHasSnapshots("snaps", errno.ENOTEMPTY), ceph.ImageBusy),
    (rados.NoSpace("full"), ceph.ImageNoSpace),  # no errno set: the class stands for it
    (rados.PermissionError("denied"), ceph.CephPermissionDenied),
    (rados.TimedOut("slow"), ceph.CephTimeout),
    (rados.IOError("io", errno.EIO), ceph.CephCommandFailed),
])
def test_librados_and_librbd_exceptions_map_by_errno_or_class(error: Exception,
                                                                kind: type[ceph.CephError]) -> None:
    assert type(_calls.translate(error, "do", Source(None), "p", "img")) is kind


# ------------------------------------------------------------------ the call path

async def test_a_call_runs_in_the_handles_threads_and_returns_its_value() -> None:
    src = Source(None)
    assert await _calls.call(src, threading.current_thread, "look") is not threading.current_thread()
    assert await _calls.call(src, lambda: 7, "compute") == 7


async def test_a_call_past_its_bound_is_a_timeout_naming_the_configured_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(ceph.CephTimeout, match=r"^wait timed out after 0\.1s$"):
        await _calls.call(Source(None), lambda: time.sleep(0.6), "wait", timeout=0.1, grace=0.1)
    assert time.monotonic() - started < 0.5


async def test_a_call_on_a_closed_handle_is_cluster_unreachable() -> None:
    src = Source(None)
    src.executor.shutdown()
    with pytest.raises(ceph.ClusterUnreachable, match="closed"):
        await _calls.call(src, lambda: 1, "anything")


async def test_a_closed_handle_shuts_down_only_after_the_calls_in_its_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Delete or a Reconnect closes a replaced handle while a short call (a capacity, an
    image's size) may still be inside librados in one of its threads: rados_shutdown under
    it is freed memory in use (the process dies). close() waits for those calls first, and
    no call starts after it began."""
    order: list[str] = []

    class Watched(Handle):
        def shutdown(self) -> None:
            order.append("shutdown")

    c = await _cluster(monkeypatch, Watched())
    handle = c.handle

    def inside_librados() -> None:
        time.sleep(0.3)
        handle.get_fsid()  # still the handle: not shut down under the call
        order.append("call")

    running = asyncio.ensure_future(_calls.call(c, inside_librados, "a short call", timeout=5))
    await asyncio.sleep(0.05)  # the call is in its thread
    await c.close()
    await running
    assert order == ["call", "shutdown"]
    with pytest.raises(ceph.ClusterUnreachable):
        await _calls.call(c, lambda: 1, "a call after close")


async def test_unexpected_output_is_a_failed_command() -> None:
    with pytest.raises(ceph.CephCommandFailed, match="unexpected output"):
        await _calls.call(Source(None), lambda: json.loads(b"{not json"), "ceph df")


# ------------------------------------------------- the three callers, one map

async def test_a_full_pool_reads_the_same_from_objects_images_and_the_ping(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the three maps disagreed: a write refused by a full pool (or its quota) is
    ImageNoSpace, "the pool is full", whoever writes. (It was CephCommandFailed for
    bs_ceph_info.json and for the ping's write test.)"""
    full = rados.NoSpace("[errno 28] RADOS no space (error writing)", errno.ENOSPC)
    with pytest.raises(ceph.ImageNoSpace, match="the pool is full"):
        await objects.write_object(Source(Handle(full)), "p", "bs_ceph_info.json", b"{}")
    quota = rados.Error("[errno 122] quota", errno.EDQUOT)
    with pytest.raises(ceph.ImageNoSpace, match="the pool is full"):
        await objects.append_object(Source(Handle(quota)), "p", "bs_ceph_info.json", b"{}")
    c = await _cluster(monkeypatch, Handle(full))
    health = await c.health("p", "imgstore-ping")
    assert isinstance(health.pool_error, ceph.ImageNoSpace)
    await c.close()


async def test_a_missing_pool_is_pool_not_found_for_every_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ceph.PoolNotFound, match=r"pool\[gone\]"):
        await objects.read_object(Source(Handle()), "gone", "bs_ceph_info.json")
    with pytest.raises(ceph.PoolNotFound, match=r"pool\[gone\]"):
        await ceph.list_images(Source(Handle()), "gone")
    c = await _cluster(monkeypatch, Handle())
    health = await c.health("gone", "imgstore-ping")
    assert isinstance(health.pool_error, ceph.PoolNotFound)
    await c.close()


async def test_a_refused_key_is_permission_denied_for_every_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    denied = rados.PermissionDeniedError("[errno 13] RADOS permission denied", errno.EACCES)
    with pytest.raises(ceph.CephPermissionDenied):
        await objects.write_object(Source(Handle(denied)), "p", "o", b"")
    c = await _cluster(monkeypatch, Handle(denied))
    health = await c.health("p", "imgstore-ping")
    assert isinstance(health.pool_error, ceph.CephPermissionDenied)
    c2 = await _cluster(monkeypatch, Handle(mon_ret=-errno.EACCES))
    with pytest.raises(ceph.CephPermissionDenied, match="ceph quorum_status"):
        await c2.health("p", "imgstore-ping")
    await c.close()
    await c2.close()
