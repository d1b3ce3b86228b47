"""Where AddImage reads an image from: ``http(s)://`` URLs and ``file:///`` paths.

ZStack accepts ``http://``, ``https://``, ``file:///``, ``upload://``, ``zstore://``,
``ftp://`` and ``sftp://`` and rewrites a URL starting with ``/`` to ``file://``.
imgstore serves the first four; the others are refused by name.

A source is read once, front to back, as a stream (no staging copy): ``length`` is the
size it announced (``None`` when it did not), ``chunks()`` the bytes. The stream is
checked against ``length`` at its end.

``http(s)://`` sources may reach only public addresses unless the setting
``image_url_allow`` names them (:mod:`url_guard`); redirects are followed here, hop by
hop, each hop's host checked and the connection pinned to the checked address. A failed
connection says only "cannot download from <url>": whether a port is closed or speaks
something else than HTTP is not told (the detail goes to the server's log).

``file:///`` is for operators: a path is read only when, after resolving ``..`` and
symbolic links, it is a regular file inside one of the directories of the setting
``file_allow_dirs`` (none by default, so no file is readable). The opened file is checked
again through ``/proc/self/fd``, so a symlink swapped in after the check does not help.
Every refusal of a path says the same, naming only the path as given: where it resolves
to, and whether something exists there, are not told. The file system is touched in a
thread, never on the event loop.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import httpx

from imgstore import ceph
from imgstore.services.images import url_guard
from imgstore.services.images.url_guard import Allowance, HostRefused, HostUnresolved
from imgstore.wire.masking import masked

log = logging.getLogger(__name__)

HTTP, HTTPS, FILE, UPLOAD = "http://", "https://", "file:///", "upload://"
SUPPORTED = (HTTP, HTTPS, FILE, UPLOAD)
ZSTACK_ONLY = ("zstore://", "ftp://", "sftp://")
READ_SIZE = 4 << 20  # the RBD object size: pieces ImageWriter takes without copying
_ZEROS = ceph.zero_block(READ_SIZE)  # a sparse file's hole, never read: the writer's own zero block,
# which it knows for zeros without comparing a byte
MAX_EXTENTS = 16
"""A piece of a sparse file with more data extents than this (holes shorter than
``ceph.ZERO_GRAIN`` between them do not count) is read whole: fewer, larger reads."""
MAX_REDIRECTS = 5


class SourceRefused(ValueError):
    """The URL cannot be used at all (bad scheme, path outside the allow-list...)."""


class SourceFailed(Exception):
    """The source was fine but reading it failed (HTTP error, cut connection, I/O)."""


def normalize_url(url: str) -> str:
    """ZStack's rewrite: an absolute path is a ``file://`` URL."""
    url = url.strip()
    return f"file://{url}" if url.startswith("/") else url


def check_url(url: str, allow_dirs: Sequence[Path]) -> str:
    """The normalised URL if imgstore can read it; SourceRefused saying why if not."""
    url = normalize_url(url)
    lowered = url.lower()
    if lowered.startswith(ZSTACK_ONLY):
        scheme = url.split("://", 1)[0]
        raise SourceRefused(f"url[{url}]: {scheme}:// sources are not supported by imgstore; "
                            f"use one of {', '.join(SUPPORTED)}")
    if not lowered.startswith(SUPPORTED):
        raise SourceRefused(f"url[{url}] is not a supported image source; "
                            f"the url must start with one of {', '.join(SUPPORTED)}")
    if lowered.startswith((HTTP, HTTPS)):
        parts = urlsplit(url)
        if not parts.hostname:
            raise SourceRefused(f"url[{masked(url)}] has no host")
        try:
            httpx.URL(url)
        except httpx.InvalidURL as e:
            raise SourceRefused(f"url[{masked(url)}] is not a valid url: {e}") from None
    elif lowered.startswith(FILE):
        _given_path(url, allow_dirs)
    return url


async def check_source(url: str, allow_dirs: Sequence[Path], allowance: Allowance) -> None:
    """The checks of a checked URL that need the file system or DNS, off the event loop:
    SourceRefused before anything is made for a source that cannot be read. A host that
    does not resolve passes: the download says so (and checks again, pinned)."""
    lowered = url.lower()
    if lowered.startswith(FILE):
        await asyncio.to_thread(allowed_file, url, allow_dirs)
    elif lowered.startswith((HTTP, HTTPS)):
        parts = httpx.URL(url)
        try:
            await url_guard.resolve(_host_of(parts), parts.port or _default_port(parts), allowance)
        except HostRefused:
            raise SourceRefused(_refused(url, parts)) from None
        except HostUnresolved:
            return


def _given_path(url: str, allow_dirs: Sequence[Path]) -> str:
    """The path a ``file:///`` URL names, as given; SourceRefused for what the URL alone
    rules out (no allow-list, another host, a relative path)."""
    if not allow_dirs:
        raise SourceRefused(
            "file:/// urls are not allowed on this server: no directory is in its allow-list "
            "(setting IMGSTORE_FILE_ALLOW_DIRS)"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise SourceRefused(f"url[{url}]: a file:// url names a path on the server, not host[{parts.netloc}]")
    raw = unquote(parts.path)
    if not raw.startswith("/") or "\0" in raw:
        raise SourceRefused(f"url[{url}]: the path must be absolute")
    return raw


def allowed_file(url: str, allow_dirs: Sequence[Path]) -> Path:
    """The real path of a ``file:///`` URL inside the allow-list, or SourceRefused saying
    only that the given path is not readable. Blocking: call it in a thread."""
    raw = _given_path(url, allow_dirs)
    real = Path(os.path.realpath(raw))
    if not _inside(real, allow_dirs) or not real.is_file():
        raise SourceRefused(_not_readable(raw))
    return real


def _not_readable(raw: str) -> str:
    """The one refusal of every path: outside, a link out, missing, not a file, changed."""
    return (f"file[{raw}] is not a regular file inside the directories allowed for images "
            "(setting IMGSTORE_FILE_ALLOW_DIRS)")


def _inside(real: Path, allow_dirs: Sequence[Path]) -> bool:
    for d in allow_dirs:
        root = Path(os.path.realpath(d))
        if real == root or root in real.parents:
            return True
    return False


# ---------------------------------------------------------------- sources


class Source:
    """An image's bytes, read once. Use as ``async with source: ... source.chunks()``."""

    url: str
    length: int | None = None
    received: int = 0

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def chunks(self) -> AsyncIterator[bytes | ceph.SparsePiece]:
        raise NotImplementedError

    def _check_length(self) -> None:
        if self.length is not None and self.received != self.length:
            raise SourceFailed(f"the source [{masked(self.url)}] ended after {self.received} bytes, "
                               f"{self.length} were announced")


class HttpSource(Source):
    """An http(s) URL: HEAD for the length first (a full pool refuses before any byte),
    then one streamed GET. Bodies are asked for without content coding, so the bytes
    are the image's and Content-Length counts them. Redirects are followed here, each
    hop's host checked against ``allowance`` and its connection pinned to the checked
    addresses (:mod:`url_guard`)."""

    def __init__(self, url: str, read_timeout: float = 60.0, allowance: Allowance | None = None,
                 verify: ssl.SSLContext | None = None) -> None:
        self.url = url
        self._allowance = allowance or Allowance()
        self._verify = verify
        self._timeout = httpx.Timeout(connect=15.0, read=read_timeout, write=read_timeout, pool=15.0)
        self._client: httpx.AsyncClient | None = None
        self._backend: url_guard.PinnedBackend | None = None
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> HttpSource:
        self._client, self._backend = url_guard.pinned_client(
            self._timeout, self._verify, headers={"Accept-Encoding": "identity"})
        try:
            self.length = await self._head_length()
        except BaseException:
            await self._client.aclose()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._response is not None:
            await self._response.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def _head_length(self) -> int | None:
        r = await self._request("HEAD")
        await r.aclose()
        if r.status_code == 404 or r.status_code == 410:
            raise SourceFailed(f"[{masked(self.url)}] answered HTTP {r.status_code}: no such image")
        if r.is_success:
            return _content_length(r)
        return None  # some servers refuse HEAD: the GET tells

    async def open(self) -> None:
        """Start the GET; the length is the GET's when HEAD did not tell."""
        self._response = await self._request("GET")
        if self._response.status_code != 200:
            raise SourceFailed(f"[{masked(self.url)}] answered HTTP {self._response.status_code} to GET")
        got = _content_length(self._response)
        if got is not None:
            self.length = got

    async def _request(self, method: str) -> httpx.Response:
        """The streamed response to ``method`` after the redirects, each hop checked."""
        assert self._client is not None
        url = httpx.URL(self.url)
        for _ in range(MAX_REDIRECTS + 1):
            await self._pin(url)
            try:
                response = await self._client.send(self._client.build_request(method, url), stream=True)
            except httpx.HTTPError as e:
                raise self._cannot(e) from None
            if not response.has_redirect_location:
                return response
            await response.aclose()
            target = response.next_request.url if response.next_request is not None else None
            if target is None or target.scheme not in ("http", "https"):
                raise SourceRefused(f"url[{masked(self.url)}] redirects to a url that is not http(s)")
            url = target
        raise SourceFailed(f"url[{masked(self.url)}] redirects more than {MAX_REDIRECTS} times")

    async def _pin(self, url: httpx.URL) -> None:
        """Resolve and check the host of one hop; its connections go to those addresses."""
        assert self._backend is not None
        host = _host_of(url)
        try:
            addresses = await url_guard.resolve(host, url.port or _default_port(url), self._allowance)
        except HostRefused as e:
            log.info("image source %s refused: %s", masked(self.url), e)
            raise SourceRefused(_refused(self.url, url)) from None
        except HostUnresolved as e:
            raise self._cannot(e) from None
        self._backend.pin(host, addresses)

    def _cannot(self, e: Exception) -> SourceFailed:
        """One message for every failure to talk HTTP: a closed port, a silent one and
        one speaking another protocol look the same to the client; the log tells."""
        log.info("cannot download from %s: %s", masked(self.url), _describe(e))
        return SourceFailed(f"cannot download from url[{masked(self.url)}]")

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._response is None:
            await self.open()
        assert self._response is not None
        try:
            async for piece in self._response.aiter_raw(READ_SIZE):
                self.received += len(piece)
                yield piece
        except httpx.HTTPError as e:
            log.info("the download of %s broke: %s", masked(self.url), _describe(e))
            raise SourceFailed(f"the download of [{masked(self.url)}] broke after {self.received} bytes") from None
        self._check_length()


class FileSource(Source):
    """A file on the server inside the allow-list, read in a thread, in READ_SIZE pieces.

    A sparse file's holes are never read. A piece that lies in a hole (``SEEK_DATA`` says
    the next data is past it) is the writer's shared block of zeros; a piece that holds
    both is read by its data extents (``SEEK_HOLE`` says where each ends) and handed over
    as a :class:`ceph.SparsePiece`, so its holes are neither read nor compared.
    """

    def __init__(self, url: str, allow_dirs: Sequence[Path]) -> None:
        self.url = url
        self._allow_dirs = list(allow_dirs)
        self._file: BinaryIO | None = None
        self._data_at = 0  # the next offset SEEK_DATA found data at (or the file's end)

    async def __aenter__(self) -> FileSource:
        self._file, self.length = await asyncio.to_thread(_open_allowed, self.url, self._allow_dirs)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)

    def _next_piece(self) -> bytes | ceph.SparsePiece:
        """The next READ_SIZE bytes: the shared zeros when they are all a hole, their
        data extents when they hold holes too, else read whole."""
        assert self._file is not None
        fd, off = self._file.fileno(), self.received
        if self._data_at <= off:
            try:
                self._data_at = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no data after off; EINVAL: no SEEK_DATA here
                    self._data_at = off
                    return self._read_whole(off)
                self._data_at = os.fstat(fd).st_size
        end = min(off + READ_SIZE, self.length if self.length is not None else off + READ_SIZE)
        if end <= off:  # at or past the length announced: what is there, for the length check
            return self._read_whole(off)
        if self._data_at >= end:
            return _ZEROS if end - off == READ_SIZE else _ZEROS[:end - off]
        return self._read_extents(fd, off, end) or self._read_whole(off)

    def _read_whole(self, off: int) -> bytes:
        assert self._file is not None
        self._file.seek(off)
        return self._file.read(READ_SIZE)

    def _read_extents(self, fd: int, off: int, end: int) -> ceph.SparsePiece | None:
        """``[off, end)`` read by its data extents (from ``_data_at``, which SEEK_DATA
        found inside it); None when it is one extent, has too many, or the file changed."""
        try:
            spans = self._extents(fd, end)
        except OSError:
            return None  # the file moved under us: the whole read and the length check say so
        if spans is None or spans == [(off, end)]:
            return None
        runs: list[tuple[int, bytes | bytearray]] = []
        for start, stop in spans:
            data = os.pread(fd, stop - start, start)
            if len(data) != stop - start:
                return None
            runs += [(start - off + a, run) for a, run in ceph.runs_to_write(data, READ_SIZE)]
        return ceph.SparsePiece(end - off, runs)

    def _extents(self, fd: int, end: int) -> list[tuple[int, int]] | None:
        """The data of ``[_data_at, end)`` as ``[start, stop)`` spans, holes shorter than a
        zero grain inside spans; None past MAX_EXTENTS. Leaves ``_data_at`` at the next data."""
        spans: list[tuple[int, int]] = []
        at = self._data_at
        while at < end:
            hole = min(os.lseek(fd, at, os.SEEK_HOLE), end)
            if spans and at - spans[-1][1] < ceph.ZERO_GRAIN:
                spans[-1] = (spans[-1][0], hole)
            elif len(spans) == MAX_EXTENTS:
                return None
            else:
                spans.append((at, hole))
            try:
                at = os.lseek(fd, hole, os.SEEK_DATA) if hole < end else end
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                at = os.fstat(fd).st_size
        self._data_at = at
        return spans

    def _in_hole(self) -> bytes | None:
        """The next piece without a thread, when the hole SEEK_DATA found covers it."""
        off = self.received
        if self._data_at >= off + READ_SIZE and (self.length is None or off + READ_SIZE <= self.length):
            return _ZEROS
        return None

    async def chunks(self) -> AsyncIterator[bytes | ceph.SparsePiece]:
        assert self._file is not None
        while True:
            try:
                piece: bytes | ceph.SparsePiece | None = self._in_hole()
                if piece is None:
                    piece = await asyncio.to_thread(self._next_piece)
            except OSError as e:
                raise SourceFailed(f"reading [{masked(self.url)}] failed after {self.received} bytes: "
                                   f"{e.strerror}") from None
            if not piece:
                break
            self.received += len(piece)
            yield piece
        self._check_length()


def _open_allowed(url: str, allow_dirs: Sequence[Path]) -> tuple[BinaryIO, int]:
    """The file of a ``file:///`` URL, open, and its size; checked again once open (a
    link swapped in meanwhile). Blocking: call it in a thread."""
    raw = _given_path(url, allow_dirs)
    path = allowed_file(url, allow_dirs)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        log.info("cannot open %s (%s): %s", raw, path, e.strerror)
        raise SourceRefused(_not_readable(raw)) from None
    f = os.fdopen(fd, "rb", buffering=0)
    try:
        opened = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _inside(opened, allow_dirs):
            raise SourceRefused(_not_readable(raw))
    except BaseException:
        f.close()
        raise
    return f, info.st_size


def open_source(url: str, allow_dirs: Sequence[Path], read_timeout: float = 60.0,
                allowance: Allowance | None = None) -> Source:
    """The source of a checked URL (not upload://); enter it to open it."""
    if url.lower().startswith(FILE):
        return FileSource(url, allow_dirs)
    return HttpSource(url, read_timeout, allowance)


def _refused(url: str, hop: httpx.URL) -> str:
    """Why a source (or one of its redirects) is refused, naming the setting that allows it."""
    via = "" if str(hop) == url else f" redirects to [{masked(str(hop))}], which"
    return (f"url[{masked(url)}]{via} names host[{hop.host}], which is not a public address: "
            "loopback, link-local, private, unspecified, multicast and reserved addresses are "
            f"refused unless the setting {url_guard.SETTING} allows them")


def _host_of(url: httpx.URL) -> str:
    """The host as httpcore connects to it (IDNA-encoded, IPv6 without brackets)."""
    return url.raw_host.decode("ascii")


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _content_length(r: httpx.Response) -> int | None:
    value = r.headers.get("content-length")
    if value is None or r.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def _describe(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text[:300]
