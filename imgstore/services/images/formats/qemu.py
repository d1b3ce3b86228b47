"""A qcow2 or vmdk file read as the raw disk it describes, streamed in order.

``qemu-img convert`` cannot write raw to a pipe (it seeks and resizes its output), and
converting to a raw temporary file first would need the disk space of the whole
allocated image a second time. Instead ``qemu-nbd`` serves the file read-only on a
unix socket, and :class:`RawReader` speaks just enough NBD (fixed-newstyle handshake,
``NBD_OPT_EXPORT_NAME``, simple replies, ``NBD_CMD_READ``) to read it front to back
with a few reads in flight. The only disk used is the source file itself.

The caller must have refused unsafe files first (``imageformat.inspect(head)
.unsafe_reason()``: backing files, vmdk parents, external data files). As a second
guard every format is opened with ``backing=null``, so qemu never follows a backing
file name (a qcow2 backing file, a vmdk ``parentFileNameHint``). The format is always
named: qemu never probes.

qemu-nbd runs under ``prlimit`` (address space and CPU seconds: a crafted file cannot
make it eat the host) and ``nice`` (conversions yield to the API). The caller bounds
the wall time (``image_convert_timeout``).

Nothing here knows of HTTP, the database or Ceph.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FORMATS", "ConvertError", "Limits", "RawReader"]

FORMATS = ("qcow2", "vmdk")
"""Formats this module converts."""

_NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
_FLAG_FIXED_NEWSTYLE = 1 << 0
_FLAG_NO_ZEROES = 1 << 1
_OPT_EXPORT_NAME = 1
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_CMD_READ = 0
_CMD_DISC = 2
_MAX_READ = 32 << 20  # qemu-nbd refuses larger reads

_START_TIMEOUT = 15.0  # seconds for qemu-nbd to open the file and listen


@dataclass(frozen=True)
class Limits:
    """Resource limits of one qemu-nbd process."""

    address_space: int = 2 << 30  # bytes (RLIMIT_AS)
    cpu_seconds: int = 6 * 3600  # RLIMIT_CPU
    niceness: int = 10

    def command(self) -> list[str]:
        """The prefix that starts a program under these limits (util-linux, coreutils)."""
        return ["prlimit", f"--as={self.address_space}", f"--cpu={self.cpu_seconds}",
                "nice", "-n", str(self.niceness)]


class ConvertError(Exception):
    """qemu-nbd could not serve the file, or the NBD conversation went wrong."""


class RawReader:
    """``async with RawReader(path, "qcow2") as r: async for piece in r.chunks(): ...``

    ``size`` is the virtual (raw) size, known once entered. ``read`` counts the raw bytes
    handed out so far (progress).
    """

    def __init__(self, path: Path, fmt: str, chunk_size: int = 4 << 20, window: int = 4,
                 limits: Limits = Limits()) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"cannot convert format {fmt!r}; only {', '.join(FORMATS)}")
        if not 0 < chunk_size <= _MAX_READ:
            raise ValueError("chunk_size must be in (0, 32 MiB]")
        self.path = Path(path)
        self.format = fmt
        self.size = 0
        self.read = 0
        self._chunk = chunk_size
        self._window = max(1, window)
        self._limits = limits
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawReader:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._stop()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw disk from offset 0 to ``size``, in order, ``chunk_size`` at a time."""
        assert self._reader is not None and self._writer is not None
        offsets = iter(range(0, self.size, self._chunk))
        pending: dict[int, tuple[int, int]] = {}  # handle -> (offset, length)
        done: dict[int, bytes] = {}
        next_offset = 0
        handle = 0
        while True:
            while len(pending) + len(done) < self._window:
                offset = next(offsets, None)
                if offset is None:
                    break
                handle += 1
                length = min(self._chunk, self.size - offset)
                pending[handle] = (offset, length)
                self._writer.write(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_READ, handle, offset, length))
            if not pending and not done:
                return
            await self._writer.drain()
            while next_offset not in done:
                got, data = await self._reply(pending)
                done[got] = data
            data = done.pop(next_offset)
            next_offset += len(data)
            self.read = next_offset
            yield data

    # ------------------------------------------------------------------ plumbing

    async def _start(self) -> None:
        if not self.path.is_file():
            raise ConvertError(f"{self.path} is not a file")
        self._dir = tempfile.TemporaryDirectory(prefix="imgstore-nbd-")
        sock = os.path.join(self._dir.name, "nbd.sock")
        self._proc = await asyncio.create_subprocess_exec(
            *self._limits.command(), "qemu-nbd", "--read-only", "--persistent", "--shared=1", "--socket", sock,
            *self._image_args(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
        while True:
            if self._proc.returncode is not None:
                raise ConvertError(f"qemu-nbd cannot open the {self.format} image: {await self._stderr()}")
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(sock, limit=_MAX_READ)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if asyncio.get_running_loop().time() > deadline:
                    raise ConvertError(f"qemu-nbd did not start within {_START_TIMEOUT:g}s") from None
                await asyncio.sleep(0.02)
        self.size = await self._handshake()

    def _image_args(self) -> list[str]:
        # qemu's json: pseudo-protocol is the one way to say backing=null on a command line;
        # "driver" names the format, so qemu never probes
        spec = {"driver": self.format, "backing": None, "file": {"driver": "file", "filename": str(self.path)}}
        return [f"json:{json.dumps(spec)}"]

    async def _handshake(self) -> int:
        assert self._reader is not None and self._writer is not None
        magic, opt_magic, flags = struct.unpack(">QQH", await self._exactly(18, "handshake"))
        if magic != _NBDMAGIC or opt_magic != _IHAVEOPT or not flags & _FLAG_FIXED_NEWSTYLE:
            raise ConvertError("qemu-nbd did not answer with a fixed-newstyle NBD handshake")
        client_flags = _FLAG_FIXED_NEWSTYLE | (flags & _FLAG_NO_ZEROES)
        self._writer.write(struct.pack(">I", client_flags))
        self._writer.write(struct.pack(">QII", _IHAVEOPT, _OPT_EXPORT_NAME, 0))  # the default export ""
        await self._writer.drain()
        size, _tflags = struct.unpack(">QH", await self._exactly(10, "export info"))
        if not client_flags & _FLAG_NO_ZEROES:
            await self._exactly(124, "export info padding")
        return int(size)

    async def _reply(self, pending: dict[int, tuple[int, int]]) -> tuple[int, bytes]:
        magic, error, handle = struct.unpack(">IIQ", await self._exactly(16, "read reply"))
        if magic != _SIMPLE_REPLY_MAGIC or handle not in pending:
            raise ConvertError("unexpected NBD reply from qemu-nbd")
        offset, length = pending.pop(handle)
        if error:
            raise ConvertError(f"qemu-nbd failed to read {length} bytes at {offset} "
                               f"of the {self.format} image (NBD error {error})")
        return offset, await self._exactly(length, "read data")

    async def _exactly(self, n: int, what: str) -> bytes:
        assert self._reader is not None
        try:
            return await self._reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ConvertError(f"qemu-nbd closed the connection during {what}: {await self._stderr()}") from None

    async def _stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None:
            return ""
        if self._proc.returncode is None:
            return "(qemu-nbd still running)"
        text = (await self._proc.stderr.read()).decode(errors="replace").strip()
        return text.replace(str(self.path), os.path.basename(self.path))[-500:] or "no message"

    async def _stop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.write(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_DISC, 0, 0, 0))
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 2)
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
