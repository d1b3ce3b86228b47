"""Where AddImage reads images from (image_sources), and the parts of the write path
that need no cluster: format refusal (image_intake) and qcow2 read as raw (qemu)."""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgstore import ceph
from imgstore.services.images.formats.qemu import ConvertError, RawReader
from imgstore.services.images.intake import ImageIntake, ImageRefused, Target
from imgstore.services.images.sources import (
    FileSource,
    HttpSource,
    SourceFailed,
    SourceRefused,
    allowed_file,
    check_source,
    check_url,
    normalize_url,
)
from imgstore.services.images.url_guard import Allowance

MiB = 1 << 20
LOOPBACK = Allowance.parse(["127.0.0.1"])  # the test's web server is not public


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def read_all(source) -> bytes:  # type: ignore[no-untyped-def]
    async with source:
        return b"".join([bytes(piece) async for piece in source.chunks()])


# ---------------------------------------------------------------- urls


def test_a_bare_path_is_a_file_url() -> None:
    assert normalize_url(" /var/images/a.qcow2 ") == "file:///var/images/a.qcow2"
    assert normalize_url("http://h/a") == "http://h/a"


@pytest.mark.parametrize("url", ["http://mirror.example/a.img", "https://h:8443/x?y=1", "upload://",
                                 "upload://disk.qcow2", "HTTP://H/A"])
def test_supported_urls_pass(url: str) -> None:
    assert check_url(url, []) == url


@pytest.mark.parametrize("url,words", [
    ("ftp://h/a.img", "ftp:// sources are not supported"),
    ("sftp://u@h/a.img", "sftp:// sources are not supported"),
    ("zstore://x", "zstore:// sources are not supported"),
    ("nfs://h/a", "not a supported image source"),
    ("a.img", "not a supported image source"),
    ("http:///nohost", "has no host"),
    ("file:///etc/passwd", "allow-list"),
])
def test_other_urls_are_refused_saying_why(url: str, words: str) -> None:
    with pytest.raises(SourceRefused, match=words):
        check_url(url, [])


# ---------------------------------------------------------------- the file allow-list


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """allowed/disk.raw, allowed/sub/deep.raw, secret.raw outside, and links both ways."""
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "disk.raw").write_bytes(b"d" * 1000)
    (allowed / "sub" / "deep.raw").write_bytes(b"e" * 10)
    (tmp_path / "secret.raw").write_bytes(b"s" * 10)
    (allowed / "out.raw").symlink_to(tmp_path / "secret.raw")
    (allowed / "in.raw").symlink_to(allowed / "sub" / "deep.raw")
    (tmp_path / "alias").symlink_to(allowed)
    return tmp_path


def test_files_inside_the_allow_list_are_read(tree: Path) -> None:
    allowed = [tree / "allowed"]
    assert allowed_file(f"file://{tree}/allowed/disk.raw", allowed) == tree / "allowed" / "disk.raw"
    assert allowed_file(f"file://{tree}/allowed/sub/../disk.raw", allowed) == tree / "allowed" / "disk.raw"
    assert allowed_file(f"file://{tree}/allowed/in.raw", allowed) == tree / "allowed" / "sub" / "deep.raw"
    assert allowed_file(f"file://{tree}/alias/disk.raw", allowed) == tree / "allowed" / "disk.raw"
    assert allowed_file(f"file://localhost{tree}/allowed/disk.raw", allowed).name == "disk.raw"
    assert allowed_file(f"file://{tree}/allowed/disk%2Eraw", allowed).name == "disk.raw"
    # an allow-list entry that is itself a link is resolved too
    assert allowed_file(f"file://{tree}/allowed/disk.raw", [tree / "alias"]).name == "disk.raw"


@pytest.mark.parametrize("path", ["allowed/../secret.raw", "allowed/out.raw", "allowed/sub",
                                  "allowed/missing.raw", "secret.raw", "missing.raw"])
def test_files_outside_the_allow_list_are_refused_in_the_same_words(tree: Path, path: str) -> None:
    """Whatever the reason, the refusal names the path as given and nothing else: not
    where it resolves to, nor whether something exists there (point 10 of the Trust issue)."""
    given = f"{tree}/{path}"
    with pytest.raises(SourceRefused) as refused:
        allowed_file(f"file://{given}", [tree / "allowed"])
    assert str(refused.value) == (f"file[{given}] is not a regular file inside the directories allowed "
                                  "for images (setting IMGSTORE_FILE_ALLOW_DIRS)")
    with pytest.raises(SourceRefused) as opening:
        run(FileSource(f"file://{given}", [tree / "allowed"]).__aenter__())
    assert str(opening.value) == str(refused.value)


def test_no_allow_list_means_no_file(tree: Path) -> None:
    with pytest.raises(SourceRefused, match="IMGSTORE_FILE_ALLOW_DIRS"):
        allowed_file(f"file://{tree}/allowed/disk.raw", [])


def test_a_file_url_names_no_other_host(tree: Path) -> None:
    with pytest.raises(SourceRefused, match="not host"):
        allowed_file(f"file://otherhost{tree}/allowed/disk.raw", [tree / "allowed"])


def test_a_file_source_streams_the_file_with_its_length(tmp_path: Path) -> None:
    data = os.urandom(9 * MiB + 5)
    (tmp_path / "a.raw").write_bytes(data)
    source = FileSource(f"file://{tmp_path}/a.raw", [tmp_path])
    assert run(read_all(source)) == data
    assert source.length == len(data) == source.received


def bytes_read() -> int:
    """What this process has read through read() so far (the page cache included)."""
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar:"))
    return int(line.split()[1])


def test_a_sparse_file_source_never_reads_its_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse.raw"
    data = os.urandom(MiB)
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        os.pwrite(f.fileno(), data, 21 * MiB)
        os.pwrite(f.fileno(), b"end", 64 * MiB - 3)
    source = FileSource(f"file://{path}", [tmp_path])
    before = bytes_read()
    got = run(read_all(source))
    read = bytes_read() - before
    assert got == path.read_bytes()
    assert read <= 3 * 4 * MiB, "only the 4 MiB pieces holding data are read (SEEK_DATA)"


def test_the_holes_inside_a_piece_with_data_are_not_read_either(tmp_path: Path) -> None:
    """A piece holding data and holes is read by its data extents (SEEK_HOLE): a sparse
    image with a little data in most pieces costs reads of its data, not of its pieces."""
    path = tmp_path / "scattered.raw"
    runs = [(4 * MiB + 512 * 1024, 256 * 1024), (6 * MiB, 4096), (9 * MiB, MiB), (15 * MiB, MiB - 3)]
    with open(path, "wb") as f:
        f.truncate(16 * MiB - 3)
        for at, n in runs:
            os.pwrite(f.fileno(), os.urandom(n), at)
    source = FileSource(f"file://{path}", [tmp_path])
    before = bytes_read()
    got = run(read_all(source))
    read = bytes_read() - before
    assert got == path.read_bytes()
    assert read <= sum(n for _, n in runs) + 64 * 1024, f"{read} bytes read for {sum(n for _, n in runs)} of data"


def test_zeros_written_inside_a_data_extent_are_still_left_out(tmp_path: Path) -> None:
    """A data extent that holds written zeros (a file made with dd, then punched) is
    handed over without them: the image stays as thin as its bytes allow."""
    path = tmp_path / "zeros.raw"
    data = os.urandom(128 * 1024) + bytes(512 * 1024) + os.urandom(64 * 1024)
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        os.pwrite(f.fileno(), data, MiB)

    async def pieces() -> list[ceph.SparsePiece | bytes]:
        async with FileSource(f"file://{path}", [tmp_path]) as source:
            return [p async for p in source.chunks()]

    got = run(pieces())
    assert b"".join(bytes(p) for p in got) == path.read_bytes()
    first = got[0]
    assert isinstance(first, ceph.SparsePiece)
    assert [(at, len(run)) for at, run in first.runs] == [(MiB, 128 * 1024), (MiB + 640 * 1024, 64 * 1024)]


def test_a_piece_of_many_small_extents_is_read_whole(tmp_path: Path) -> None:
    """A fragmented piece (more extents than MAX_EXTENTS) reads as the same bytes."""
    path = tmp_path / "fragmented.raw"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        for i in range(40):
            os.pwrite(f.fileno(), os.urandom(4096), 4 * MiB + i * 96 * 1024)
    assert run(read_all(FileSource(f"file://{path}", [tmp_path]))) == path.read_bytes()


def test_a_hole_is_the_writers_own_zero_block(tmp_path: Path) -> None:
    """A whole piece of hole is handed over as the very block of zeros the RBD writer
    compares with: it knows it for zeros without reading a byte."""
    path = tmp_path / "holes.raw"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
        os.pwrite(f.fileno(), b"x", 9 * MiB)

    async def pieces() -> list[bytes]:
        async with FileSource(f"file://{path}", [tmp_path]) as source:
            return [p async for p in source.chunks()]

    got = run(pieces())
    assert [len(p) for p in got] == [4 * MiB] * 4
    assert [p is ceph.zero_block(4 * MiB) for p in got] == [True, True, False, True]


def test_a_file_that_grows_or_shrinks_while_it_is_read_fails(tmp_path: Path) -> None:
    """The length announced is the file's size when it was opened: a file changed under
    the read is refused, not taken cut short or with bytes past that length."""
    path = tmp_path / "moving.raw"

    async def read_while(change: Callable[[], None]) -> bytes:
        async with FileSource(f"file://{path}", [tmp_path]) as source:
            change()
            return b"".join([p async for p in source.chunks()])

    def grow() -> None:
        with path.open("ab") as f:
            f.write(b"more")

    for change in (grow, lambda: os.truncate(path, 5 * MiB)):
        path.write_bytes(os.urandom(9 * MiB))
        with pytest.raises(SourceFailed, match="were announced"):
            run(read_while(change))
    path.write_bytes(os.urandom(4 * MiB))  # a hole to its end, cut at a piece's edge
    os.truncate(path, 12 * MiB)
    with pytest.raises(SourceFailed, match="were announced"):
        run(read_while(lambda: os.truncate(path, 8 * MiB)))


# ---------------------------------------------------------------- http


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    """A loopback http server: /full serves 3 MiB, /short announces 3 MiB and sends 1."""
    body = os.urandom(3 * MiB)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.send_response(200 if self.path != "/gone" else 404)
            self.send_header("Content-Length", str(len(body)) if self.path != "/gone" else "0")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if self.path == "/full" else body[:MiB])
            self.close_connection = True

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.body = body  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_http_source_streams_and_counts(web: str) -> None:
    source = HttpSource(f"{web}/full", allowance=LOOPBACK)
    data = run(read_all(source))
    assert len(data) == 3 * MiB == source.length


def test_an_http_source_cut_short_fails(web: str) -> None:
    with pytest.raises(SourceFailed, match=r"broke after|ended after"):
        run(read_all(HttpSource(f"{web}/short", allowance=LOOPBACK)))


def test_a_missing_http_image_fails_at_head(web: str) -> None:
    with pytest.raises(SourceFailed, match="404"):
        run(read_all(HttpSource(f"{web}/gone", allowance=LOOPBACK)))


# ---------------------------------------------------------------- the write path without a cluster


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_unsafe_images_are_refused_before_any_storage_is_touched(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "16M")
    child = tmp_path / "child.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(child))

    async def intake_of(data: bytes) -> None:
        # the target has no cluster: touching it would fail, refusing must come first
        intake = ImageIntake([Target("bs", None, "pool")], "0" * 32, len(data), tmp_path)  # type: ignore[arg-type]
        try:
            await intake.write(data)
            await intake.finish()
        finally:
            await intake.abort()

    with pytest.raises(ImageRefused, match="backing file"):
        run(intake_of(child.read_bytes()))
    with pytest.raises(ImageRefused, match="vhdx"):
        run(intake_of(b"vhdxfile" + bytes(70000)))
    assert list(tmp_path.glob("0" * 32 + "*")) == [], "nothing staged"


def test_a_qcow2_reads_as_the_raw_disk_it_holds(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(3 * MiB) + bytes(5 * MiB) + os.urandom(MiB + 512))
    qcow2 = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))

    async def read() -> tuple[int, bytes]:
        async with RawReader(qcow2, "qcow2", chunk_size=MiB, window=3) as reader:
            return reader.size, b"".join([p async for p in reader.chunks()])

    size, data = run(read())
    assert size == raw.stat().st_size
    assert hashlib.sha256(data).digest() == hashlib.sha256(raw.read_bytes()).digest()


def test_a_broken_qcow2_is_a_convert_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"QFI\xfb" + bytes(1000))

    async def read() -> None:
        async with RawReader(junk, "qcow2") as reader:
            async for _ in reader.chunks():
                pass

    with pytest.raises(ConvertError, match="qemu-nbd"):
        run(read())


def test_file_checks_and_opens_run_off_the_event_loop(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """realpath, stat and open of a file:/// source happen in a worker thread: a slow
    file system (NFS, a stuck disk) does not stall every other request."""
    on_loop: list[str] = []

    def watched(name, real):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.current_thread() is threading.main_thread():
                on_loop.append(name)
            return real(*args, **kwargs)
        return call

    for name in ("open", "stat", "fstat", "lstat"):
        monkeypatch.setattr(os, name, watched(name, getattr(os, name)))
    monkeypatch.setattr(os.path, "realpath", watched("realpath", os.path.realpath))
    url, allowed = f"file://{tree}/allowed/disk.raw", [tree / "allowed"]

    async def check_and_read() -> bytes:
        await check_source(url, allowed, Allowance())
        return await read_all(FileSource(url, allowed))

    assert run(check_and_read()) == b"d" * 1000
    assert on_loop == []
