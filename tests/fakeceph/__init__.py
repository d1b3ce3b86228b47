"""A fake Ceph behind the ``imgstore.ceph`` facade, for ``scripts/test.sh --quick``.

Why: the API tests that need a storage but nothing of Ceph's own behaviour (zones, tags,
queries, a storage's lifecycle, images added and deleted) should run in the inner loop,
where no cluster runs. They run against this fake there and against the real clusters in
CI, unchanged: the fake stands where the real thing stands, behind the facade the
services import (``imgstore/ceph/__init__.py``), so every line above it is the real code.

The fake's state is files, so the server, its pinger child and the test see one cluster:
``$IMGSTORE_TEST_FAKE_CEPH/<cluster>/`` holds ``cluster.json`` (its ports, fsid, ssh
login, host key), ``keys/<client>`` (cephx keys), and ``pools/<pool>/`` with
``objects/<name>`` (RADOS objects) and ``images/<name>`` (an RBD image as a sparse file:
zeros never written, holes kept).

What it is not: no faults, no daemons to stop, no quotas or full pools, no snapshots or
watchers, no ``ceph`` CLI. A test that needs one of those stays on the real clusters
(marked ``real_ceph``).

How it gets in: ``tests/fakeceph/site/sitecustomize.py`` (on ``PYTHONPATH`` when
``IMGSTORE_TEST_FAKE_CEPH`` is set, tests/conftest.py) calls :func:`install` as soon as
``imgstore.ceph`` has been imported, before any service imports a name from it.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import time
import types
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

from imgstore.ceph import (
    CHUNK_SIZE,
    READ_AHEAD,
    WRITE_WINDOW,
    Capacity,
    CephPermissionDenied,
    CephTimeout,
    ClusterUnreachable,
    Health,
    ImageBusy,
    ImageExists,
    ImageNotFound,
    ImageSizeMismatch,
    MonUrl,
    PoolNotFound,
    SparsePiece,
    SshAuthFailed,
    SshHostKeyMismatch,
    SshUnreachable,
    WriteResult,
)
from imgstore.ceph import Cluster as RealCluster
from imgstore.ceph import ImageWriter as RealImageWriter
from imgstore.ceph.rbd.zeros import data_runs  # the real writer's idea of a hole

ENV = "IMGSTORE_TEST_FAKE_CEPH"
GiB = 1 << 30
TOTAL = 100 * GiB  # every fake cluster's raw capacity


# ---------------------------------------------------------------- the clusters on disk


@dataclasses.dataclass(frozen=True)
class Home:
    """One fake cluster's directory: where its facts, keys, pools, objects and images are
    (the one place that knows the layout: the fake's calls and the tests' side use it)."""

    path: Path

    @property
    def conf(self) -> Path:
        return self.path / "cluster.json"

    def key(self, client: str) -> Path:
        return self.path / "keys" / client

    def pool(self, pool: str) -> Path:
        return self.path / "pools" / pool

    def images(self, pool: str) -> Path:
        return self.pool(pool) / "images"

    def objects(self, pool: str) -> Path:
        return self.pool(pool) / "objects"

    def make_pool(self, pool: str) -> None:
        self.images(pool).mkdir(parents=True, exist_ok=True)
        self.objects(pool).mkdir(exist_ok=True)

    def pools(self) -> set[str]:
        return {p.name for p in (self.path / "pools").iterdir()}

    def clients(self) -> set[str]:
        return {k.name for k in (self.path / "keys").iterdir() if not k.name.startswith(".")}


def home(name: str) -> Home:
    return Home(Path(os.environ[ENV]) / name)


def create_cluster(name: str, password: str) -> dict[str, Any]:
    """Make (or find) the fake cluster ``name`` (``c<N>``); its ``cluster.json``. Its ports
    only tell the fake clusters apart: nothing listens on them."""
    where = home(name)
    if where.conf.exists():
        return json.loads(where.conf.read_text())  # type: ignore[no-any-return]
    (where.path / "pools").mkdir(parents=True, exist_ok=True)
    (where.path / "keys").mkdir(exist_ok=True)
    n = int(name.lstrip("c"))
    ssh_port, mon_port = 50000 + n, 51000 + n
    facts = {
        "name": name, "ssh_port": ssh_port, "mon_port": mon_port, "user": "root", "password": password,
        "fsid": str(uuid.uuid4()),
        "host_key": "SHA256:" + base64.b64encode(hashlib.sha256(name.encode()).digest()).decode().rstrip("="),
    }
    tmp = where.path / f".cluster.json.{os.getpid()}"
    tmp.write_text(json.dumps(facts))
    try:
        os.link(tmp, where.conf)  # the first process to make it wins; the others read its facts
    except FileExistsError:
        facts = json.loads(where.conf.read_text())
    finally:
        tmp.unlink()
    return facts


def _write_whole(path: Path, data: bytes) -> None:
    """Readers in other processes (the server, its pinger child) see the old or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _clusters() -> list[tuple[Home, dict[str, Any]]]:
    return [(Home(conf.parent), json.loads(conf.read_text()))
            for conf in sorted(Path(os.environ[ENV]).glob("*/cluster.json"))]


def _by_ssh(host: str, port: int) -> tuple[Home, dict[str, Any]] | None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return next(((h, c) for h, c in _clusters() if c["ssh_port"] == port), None)


def _by_mon_host(mon_host: str) -> tuple[Home, dict[str, Any]] | None:
    """The cluster whose mon a librados ``mon_host`` names (``v1:127.0.0.1:PORT``)."""
    ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", mon_host)}
    return next(((h, c) for h, c in _clusters() if c["mon_port"] in ports), None)


def _cephx_key() -> str:
    """A key shaped as ceph's CryptoKey (type AES, created, length, secret)."""
    secret = secrets.token_bytes(16)
    return base64.b64encode(struct.pack("<HIIH", 1, int(time.time()), 0, len(secret)) + secret).decode()


# ---------------------------------------------------------------- ssh: the mon hosts


async def offered_host_key(host: str, port: int, timeout: float) -> str:
    found = _by_ssh(host, port)
    if found is None:
        raise SshUnreachable(f"cannot read the ssh host key of {host}:{port}: Connection refused", host)
    return str(found[1]["host_key"])


class MonShell:
    """One mon host of a fake cluster, over a pretend ssh login."""

    def __init__(self, mon: MonUrl, timeout: float = 10.0, private_key: Path | None = None) -> None:
        self._mon, self._private_key = mon, private_key
        self._home: Home | None = None
        self._conf: dict[str, Any] = {}
        self.host_key_fingerprint: str | None = None

    async def __aenter__(self) -> MonShell:
        self._login()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._home = None

    def _login(self) -> Home:
        if self._home is not None:
            return self._home
        mon = self._mon
        where = f"{mon.username}@{mon.host_for_url}:{mon.ssh_port}"
        found = _by_ssh(mon.hostname, mon.ssh_port)
        if found is None:
            raise SshUnreachable(f"cannot connect to {where}: Connection refused", mon.hostname)
        home, conf = found
        if mon.host_key and mon.host_key != conf["host_key"]:
            raise SshHostKeyMismatch(f"{where} offered the ssh host key {conf['host_key']}, not the "
                                     f"pinned {mon.host_key}", mon.hostname, mon.host_key, conf["host_key"])
        if mon.username != conf["user"] or (mon.password != conf["password"] and not self._private_key):
            raise SshAuthFailed(f"ssh login to {where} refused: wrong user name or password", mon.hostname)
        self._home, self._conf, self.host_key_fingerprint = home, conf, conf["host_key"]
        return home

    async def facts(self) -> Any:
        # late, as the facade has it (PEP 562): a pinger child, faked too, never loads asyncssh
        from imgstore.ceph.ssh import MonFacts

        self._login()
        port = self._mon.mon_port  # librados will tell when no mon listens there (Cluster.connect)
        return MonFacts(self._mon.hostname, self._conf["fsid"], "127.0.0.1", f"v1:127.0.0.1:{port}")

    async def pool_exists(self, pool: str) -> bool:
        return self._login().pool(pool).is_dir()

    async def create_pool(self, pool: str) -> None:
        self._login().make_pool(pool)

    async def delete_pool(self, pool: str) -> None:
        shutil.rmtree(self._login().pool(pool), ignore_errors=True)

    async def get_or_create_key(self, client: str, pool: str) -> str:
        path = self._login().key(client)
        entry = json.loads(path.read_text()) if path.exists() else {"key": _cephx_key()}
        entry["pool"] = pool
        _write_whole(path, json.dumps(entry).encode())
        return str(entry["key"])

    async def delete_key(self, client: str) -> None:
        self._login().key(client).unlink(missing_ok=True)


# ---------------------------------------------------------------- librados: the cluster handle


class Cluster(RealCluster):
    """A storage's handle on a fake cluster: its mon port and its client's key. The real
    handle's name, executor and close stand; what asks the cluster is faked."""

    def __init__(self, mon_host: str, client: str, key: str, timeout: float = 10.0) -> None:
        super().__init__(mon_host, client, key, timeout)
        self._home: Home | None = None

    @property
    def handle(self) -> Home:  # type: ignore[override]
        if self._home is None:
            raise ClusterUnreachable("the cluster handle is not connected", self._mon_host)
        return self._home

    def _login(self) -> Home:
        found = _by_mon_host(self._mon_host)
        if found is None:
            raise ClusterUnreachable(f"cannot reach any ceph monitor of [{self._mon_host}]", self._mon_host)
        key = found[0].key(self._client)
        if not key.exists() or json.loads(key.read_text())["key"] != self._key:
            raise CephPermissionDenied(f"the cephx key of client.{self._client} was refused (revoked or "
                                       "deleted?)", self._mon_host)
        return found[0]

    async def connect(self) -> None:
        if self._home is None:
            self._home = self._login()

    def pool_path(self, pool: str) -> Path:
        """The pool's directory; PoolNotFound, or CephPermissionDenied outside the one
        pool the key's caps name (``osd 'profile rbd pool=P'``)."""
        path = self.handle.pool(pool)
        if not path.is_dir():
            raise PoolNotFound(f"pool {pool} does not exist", self._mon_host)
        if json.loads(self.handle.key(self._client).read_text())["pool"] != pool:
            raise CephPermissionDenied(f"client.{self._client} may not use pool {pool}", self._mon_host)
        return path

    async def check_key(self) -> None:
        await self.connect()
        self._login()

    async def close(self) -> None:
        self._home = None
        await super().close()

    async def fsid(self) -> str:
        return str(json.loads(self.handle.conf.read_text())["fsid"])

    async def pool_exists(self, pool: str) -> bool:
        return self.handle.pool(pool).is_dir()

    async def capacity(self, pool: str) -> Capacity:
        used = sum(_allocated(d) for d in self.pool_path(pool).iterdir())
        return Capacity(TOTAL, TOTAL - used, TOTAL - used, used, TOTAL, 1, 0.0, "Copy")

    async def health(self, pool: str, object_name: str) -> Health:
        home = self._login()  # the mons answer, or this raises
        mon_port = json.loads(home.conf.read_text())["mon_port"]
        quorum = frozenset({f"127.0.0.1:{mon_port}"})
        try:
            return Health(quorum, await self.capacity(pool), None)
        except (PoolNotFound, CephPermissionDenied) as e:
            return Health(quorum, None, e)


def _allocated(folder: Path) -> int:
    """Bytes the files of ``folder`` hold (images and objects come and go meanwhile)."""
    total = 0
    for entry in os.scandir(folder):
        try:
            total += entry.stat().st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def _images(cluster: Cluster, pool: str) -> Path:
    cluster.pool_path(pool)  # there, and the key's
    return cluster.handle.images(pool)


def _image(cluster: Cluster, pool: str, name: str) -> Path:
    path = _images(cluster, pool) / name
    if not path.exists():
        raise ImageNotFound(f"image {pool}/{name} does not exist", cluster.mon_host)
    return path


# ---------------------------------------------------------------- RADOS objects


def _object(cluster: Cluster, pool: str, name: str) -> Path:
    cluster.pool_path(pool)  # there, and the key's
    return cluster.handle.objects(pool) / name


async def read_object(cluster: Cluster, pool: str, name: str) -> bytes | None:
    path = _object(cluster, pool, name)
    return path.read_bytes() if path.exists() else None


async def write_object(cluster: Cluster, pool: str, name: str, data: bytes) -> None:
    _write_whole(_object(cluster, pool, name), data)


async def append_object(cluster: Cluster, pool: str, name: str, data: bytes) -> None:
    with _object(cluster, pool, name).open("ab") as f:
        f.write(data)


async def remove_object(cluster: Cluster, pool: str, name: str) -> bool:
    path = _object(cluster, pool, name)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


@contextlib.asynccontextmanager
async def object_lock(cluster: Cluster, pool: str, name: str, *, duration: int = 60,
                      wait: float = 30.0) -> AsyncIterator[None]:
    """An flock on a file beside the object: exclusive across the nodes of one machine."""
    _object(cluster, pool, name).touch()
    fd = os.open(_object(cluster, pool, f".lock.{name}"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CephTimeout(f"lock object {pool}/{name}: still held after {wait:g}s",
                                      cluster.mon_host) from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- RBD images


async def image_size(cluster: Cluster, pool: str, name: str) -> int:
    return _image(cluster, pool, name).stat().st_size


async def image_usage(cluster: Cluster, pool: str, name: str) -> tuple[int, int]:
    st = _image(cluster, pool, name).stat()
    return st.st_size, min(st.st_size, st.st_blocks * 512)


async def list_images(cluster: Cluster, pool: str) -> list[str]:
    return sorted(p.name for p in _images(cluster, pool).iterdir() if not p.name.startswith("."))


async def remove_image(cluster: Cluster, pool: str, name: str, *, purge_snapshots: bool = False,
                       missing_ok: bool = False) -> None:
    path = _images(cluster, pool) / name
    if _writing(path):
        raise ImageBusy(f"image {pool}/{name} is open for writing", cluster.mon_host)
    if not path.exists() and not missing_ok:
        raise ImageNotFound(f"image {pool}/{name} does not exist", cluster.mon_host)
    path.unlink(missing_ok=True)


def _writing(path: Path) -> bool:
    """Whether an ImageWriter holds the image (a watcher, in librbd's words)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


async def iter_image(cluster: Cluster, pool: str, name: str, start: int = 0, end: int | None = None,
                     chunk: int = CHUNK_SIZE, readahead: int = READ_AHEAD) -> AsyncGenerator[bytes, None]:
    if start < 0 or (end is not None and end < start) or chunk <= 0:
        raise ValueError(f"bad range [{start}, {end}) or chunk {chunk}")
    with _image(cluster, pool, name).open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if start > size:
            raise ValueError(f"range start {start} is beyond the image size {size}")
        stop = size if end is None else min(end, size)
        off = start
        while off < stop:
            length = min(stop, (off // chunk + 1) * chunk) - off
            yield os.pread(f.fileno(), length, off)
            off += length


async def read_range(cluster: Cluster, pool: str, name: str, offset: int, length: int) -> bytes:
    return b"".join([p async for p in iter_image(cluster, pool, name, offset, offset + length)])


class ImageWriter(RealImageWriter):
    """The real writer's contract (imgstore/ceph/rbd/writer.py) on a sparse file: all or
    nothing; whole chunks written as they fill (so :attr:`durable` is a chunk boundary,
    what a restarted upload continues from), the last piece at commit; zeros not written;
    an exclusive flock while open (what ``remove_image`` sees as a watcher). The real
    writer's checks of its arguments, its ``async with`` and its repr stand."""

    def __init__(self, cluster: Cluster, pool: str, name: str, size: int | None = None, *,
                 chunk_size: int = CHUNK_SIZE, window: int = WRITE_WINDOW, checksums: bool = True,
                 read_back: bool = False) -> None:
        super().__init__(cluster, pool, name, size, chunk_size=chunk_size, window=window, checksums=checksums,
                         read_back=read_back)  # a file has no OSD cache to ask: nothing more
        self._hashes = [hashlib.md5(), hashlib.sha512()] if checksums else []
        self._fd: int | None = None
        self._fill_bytes = bytearray()  # the chunk being filled, from self._offset on

    def _open_fd(self, flags: int) -> int:
        path = _images(self._cluster, self.pool) / self.name
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise ImageExists(f"image {self.pool}/{self.name} already exists", self._cluster.mon_host) from None
        except FileNotFoundError:
            raise ImageNotFound(f"image {self.pool}/{self.name} does not exist", self._cluster.mon_host) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return fd

    def _opened(self) -> int:
        if self._state != "open" or self._fd is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._fd

    async def open(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self!r} cannot be opened twice")
        self._state = "open"
        fd = self._open_fd(os.O_RDWR | os.O_CREAT | os.O_EXCL)
        self._created = True
        os.ftruncate(fd, self.expected_size or 0)

    async def reopen(self, offset: int) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self!r} cannot be opened twice")
        if offset % self._chunk or offset < 0:
            raise ValueError(f"offset {offset} is not a multiple of the chunk size {self._chunk}")
        self._state = "open"
        fd = self._open_fd(os.O_RDWR)
        self._created = True
        size = os.fstat(fd).st_size
        if offset > size:
            await self.abort()
            raise ImageSizeMismatch(f"image {self.pool}/{self.name} has {size} bytes, less than the {offset} "
                                    "to continue from", self._cluster.mon_host)
        self.received = self._offset = offset

    @property
    def left_behind(self) -> bool:
        return False

    @property
    def durable(self) -> int:
        return self._offset

    async def settle(self) -> int:
        return self._offset

    async def detach(self) -> int:
        self._close()
        self._state, self._created, self._fill_bytes = "detached", False, bytearray()
        return self._offset

    async def write(self, data: bytes | bytearray | memoryview | SparsePiece,
                    release: Callable[[], None] | None = None) -> None:
        if isinstance(data, SparsePiece):
            data = bytes(data)  # its runs land as the real writer's do: the zeros stay holes
        try:
            fd = self._opened()
            for h in self._hashes:
                h.update(data)
            self.received += len(data)
            self._fill_bytes += data
            while len(self._fill_bytes) >= self._chunk:
                self._put(fd, self._fill_bytes[: self._chunk])
                del self._fill_bytes[: self._chunk]
        except BaseException:
            await self.abort()
            raise
        finally:
            if release is not None:
                release()

    def _put(self, fd: int, piece: bytes | bytearray) -> None:
        view = memoryview(piece)
        for start, end in data_runs(piece, self._chunk):  # zeros are a hole: never written
            os.pwrite(fd, view[start:end], self._offset + start)
        self._offset += len(piece)

    async def commit(self) -> WriteResult:
        fd = self._opened()
        size = self.received
        if self.expected_size is not None and size != self.expected_size:
            await self.abort()
            raise ImageSizeMismatch(f"image {self.pool}/{self.name}: got {size} bytes, {self.expected_size} "
                                    "were announced", self._cluster.mon_host)
        self._put(fd, self._fill_bytes)
        os.ftruncate(fd, size)
        self._close()
        self._state = "committed"
        md5, sha512 = (h.hexdigest() for h in self._hashes) if self._hashes else (None, None)
        self.result = WriteResult(size, md5, sha512)
        return self.result

    async def abort(self) -> None:
        if self._state in ("committed", "detached"):
            raise RuntimeError(f"{self!r} is {self._state}; remove the image instead")
        self._close()
        if self._created:
            (_images(self._cluster, self.pool) / self.name).unlink(missing_ok=True)
        self._state = "aborted"

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------- the facade


def _no_osd_checksums() -> bool:
    return False  # a migration reads its copy back


FAKES: dict[str, object] = {
    "offered_host_key": offered_host_key, "MonShell": MonShell, "Cluster": Cluster,
    "read_object": read_object, "write_object": write_object, "append_object": append_object,
    "remove_object": remove_object, "object_lock": object_lock,
    "image_size": image_size, "image_usage": image_usage, "list_images": list_images,
    "remove_image": remove_image, "iter_image": iter_image, "read_range": read_range,
    "ImageWriter": ImageWriter, "osd_checksums_available": _no_osd_checksums,
}


def install(facade: types.ModuleType) -> None:
    """Put the fakes in ``imgstore.ceph`` (the package just imported, nothing above it yet)."""
    for name, fake in FAKES.items():
        setattr(facade, name, fake)
    facade.FAKE = True  # type: ignore[attr-defined]


__all__ = ["ENV", "FAKES", "Home", "create_cluster", "home", "install"]
