"""Where AddImage reads an image from: ``http(s)://`` URLs and ``file:///`` paths.

ZStack accepts ``http://``, ``https://``, ``file:///``, ``upload://``, ``zstore://``,
``ftp://`` and ``sftp://`` and rewrites a URL starting with ``/`` to ``file://``
(zstack-api.md 5). imgstore serves the first four; the others are refused by name.

A source is read once, front to back, as a stream (no staging copy): ``length`` is the
size it announced (``None`` when it did not), ``chunks()`` the bytes. The stream is
checked against ``length`` at its end.

``file:///`` is for operators: a path is read only when, after resolving ``..`` and
symbolic links, it is a regular file inside one of the directories of the setting
``file_allow_dirs`` (none by default, so no file is readable). The opened file is checked
again through ``/proc/self/fd``, so a symlink swapped in after the check does not help.
"""
from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

HTTP, HTTPS, FILE, UPLOAD = "http://", "https://", "file:///", "upload://"
SUPPORTED = (HTTP, HTTPS, FILE, UPLOAD)
ZSTACK_ONLY = ("zstore://", "ftp://", "sftp://")
READ_SIZE = 4 << 20  # the RBD object size: pieces ImageWriter takes without copying


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
            raise SourceRefused(f"url[{url}] has no host")
    elif lowered.startswith(FILE):
        allowed_file(url, allow_dirs)
    return url


def allowed_file(url: str, allow_dirs: Sequence[Path]) -> Path:
    """The real path of a ``file:///`` URL inside the allow-list, or SourceRefused."""
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
    real = Path(os.path.realpath(raw))
    if not _inside(real, allow_dirs):
        shown = f" (it resolves to {real})" if str(real) != os.path.normpath(raw) else ""
        raise SourceRefused(f"file[{raw}]{shown} is not inside a directory allowed for images "
                            f"[{', '.join(str(d) for d in allow_dirs)}]")
    if not real.exists():
        raise SourceRefused(f"file[{raw}] does not exist")
    if not real.is_file():
        raise SourceRefused(f"file[{raw}] is not a regular file")
    return real


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

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def _check_length(self) -> None:
        if self.length is not None and self.received != self.length:
            raise SourceFailed(f"the source [{self.url}] ended after {self.received} bytes, "
                               f"{self.length} were announced")


class HttpSource(Source):
    """An http(s) URL: HEAD for the length first (a full pool refuses before any byte),
    then one streamed GET. Bodies are asked for without content coding, so the bytes
    are the image's and Content-Length counts them."""

    def __init__(self, url: str, read_timeout: float = 60.0) -> None:
        self.url = url
        self._timeout = httpx.Timeout(connect=15.0, read=read_timeout, write=read_timeout, pool=15.0)
        self._client: httpx.AsyncClient | None = None
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> HttpSource:
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=True,
                                         headers={"Accept-Encoding": "identity"})
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
        assert self._client is not None
        try:
            r = await self._client.head(self.url)
        except httpx.HTTPError as e:
            raise SourceFailed(f"cannot reach [{self.url}]: {_describe(e)}") from None
        if r.status_code == 404 or r.status_code == 410:
            raise SourceFailed(f"[{self.url}] answered HTTP {r.status_code}: no such image")
        if r.is_success:
            return _content_length(r)
        return None  # some servers refuse HEAD: the GET tells

    async def open(self) -> None:
        """Start the GET; the length is the GET's when HEAD did not tell."""
        assert self._client is not None
        request = self._client.build_request("GET", self.url)
        try:
            self._response = await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise SourceFailed(f"cannot download [{self.url}]: {_describe(e)}") from None
        if self._response.status_code != 200:
            raise SourceFailed(f"[{self.url}] answered HTTP {self._response.status_code} to GET")
        got = _content_length(self._response)
        if got is not None:
            self.length = got

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._response is None:
            await self.open()
        assert self._response is not None
        try:
            async for piece in self._response.aiter_raw(READ_SIZE):
                self.received += len(piece)
                yield piece
        except httpx.HTTPError as e:
            raise SourceFailed(f"the download of [{self.url}] broke after {self.received} bytes: "
                               f"{_describe(e)}") from None
        self._check_length()


class FileSource(Source):
    """A file on the server inside the allow-list, read in a thread."""

    def __init__(self, url: str, allow_dirs: Sequence[Path]) -> None:
        self.url = url
        self._allow_dirs = list(allow_dirs)
        self._file = None  # type: ignore[var-annotated]

    async def __aenter__(self) -> FileSource:
        path = allowed_file(self.url, self._allow_dirs)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise SourceFailed(f"cannot open file[{path}]: {e.strerror}") from None
        f = os.fdopen(fd, "rb", buffering=0)
        try:
            opened = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or not _inside(opened, self._allow_dirs):
                raise SourceRefused(f"file[{path}] changed while it was opened; refused")
        except BaseException:
            f.close()
            raise
        self._file = f
        self.length = info.st_size
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._file is not None:
            self._file.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._file is not None
        while True:
            try:
                piece = await asyncio.to_thread(self._file.read, READ_SIZE)
            except OSError as e:
                raise SourceFailed(f"reading [{self.url}] failed after {self.received} bytes: "
                                   f"{e.strerror}") from None
            if not piece:
                break
            self.received += len(piece)
            yield piece
        self._check_length()


def open_source(url: str, allow_dirs: Sequence[Path], read_timeout: float = 60.0) -> Source:
    """The source of a checked URL (not upload://); enter it to open it."""
    if url.lower().startswith(FILE):
        return FileSource(url, allow_dirs)
    return HttpSource(url, read_timeout)


def _content_length(r: httpx.Response) -> int | None:
    value = r.headers.get("content-length")
    if value is None or r.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def _describe(e: httpx.HTTPError) -> str:
    text = str(e) or type(e).__name__
    return text[:300]
