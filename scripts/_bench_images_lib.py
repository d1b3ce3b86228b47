"""The pieces of ``scripts/bench_images.py``: the files, the server, the clients and the
floors it measures with. Not a benchmark itself."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

MiB = 1 << 20
GiB = 1 << 30


# ---------------------------------------------------------------- setup


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
        f.write(os.urandom(size % (16 * MiB)))
    return path


def sparse_file(path: Path, size: int, data_fraction: float = 0.1, seed: int = 4) -> Path:
    """``size`` bytes, ``data_fraction`` of them random in 1 MiB runs, the rest holes."""
    slots = size // MiB
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for slot in sorted(rng.sample(range(slots), int(slots * data_fraction))):
            os.pwrite(f.fileno(), os.urandom(MiB), slot * MiB)
    return path


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.conf = ["-c", env["CEPH_CONF"]]

    def run(self, tool: str, *args: str, timeout: float = 600) -> float:
        """Run ``rbd``/``ceph`` and return its wall time; raise if it failed."""
        t0 = time.perf_counter()
        out = subprocess.run([tool, *self.conf, *args], capture_output=True, text=True, timeout=timeout)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {out.stderr.strip()[-500:]}")
        return took


class RssSampler:
    """Peak VmRSS of a process, sampled every 50 ms while in the block; VmHWM too."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def status(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, self.status("VmRSS"))

    def __enter__(self) -> RssSampler:
        try:  # reset VmHWM to the current RSS (Linux >= 4.0)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        self.before_kib = self.status("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.hwm_kib = self.status("VmHWM")


# ---------------------------------------------------------------- the measured operations


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (every process, the kernel, the
    Ceph daemons): the difference over a job on an idle machine is what the job costs,
    and on N cores it takes at least that / N seconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` has used (user + system)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds this process's ended children (curl, rbd) have used."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


@dataclass
class CpuUse:
    """Where a job's CPU went: the whole machine, the imgstore server, the tools run."""

    machine: float = 0.0
    server: float = 0.0
    tools: float = 0.0


@contextlib.contextmanager
def cpu_use(server_pid: int | None) -> Iterator[CpuUse]:
    use = CpuUse()
    m, s, t = machine_cpu(), process_cpu(server_pid) if server_pid else 0.0, children_cpu()
    yield use
    use.machine, use.tools = machine_cpu() - m, children_cpu() - t
    use.server = process_cpu(server_pid) - s if server_pid else 0.0


def file_pieces(path: Path, piece: int) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(piece):
            yield chunk


def upload(api: httpx.Client, bs: str, path: Path, name: str) -> tuple[float, str, dict]:
    """AddImage(upload://) + ``curl -T`` of the file to the upload URL: (seconds, image
    uuid, the image's inventory once Ready)."""
    size = path.stat().st_size
    t0 = time.perf_counter()
    r = api.post("/images", json={"params": {"name": name, "url": "upload://", "backupStorageUuids": [bs],
                                             "format": "raw"}})
    inv = job_result(api, r)["inventory"]  # AddImage is a job by nature: it answers at once with the upload URL
    put = subprocess.run(
        ["curl", "-sS", "-T", str(path), "-H", f"X-Image-Size: {size}", "-H", "Expect:",
         "-H", "Content-Type: application/octet-stream", "-w", "\\n%{http_code}",
         inv["backupStorageRefs"][0]["uploadUrl"]], capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    body, _, code = put.stdout.rpartition("\n")
    if put.returncode != 0 or code != "200" or not json.loads(body).get("completed"):
        raise RuntimeError(f"upload of {path.name} failed: {code} {put.stderr[-300:]} {body[:500]}")
    return took, inv["uuid"], json.loads(body)["inventory"]


def job_result(api: httpx.Client, r: httpx.Response) -> dict:
    """The body of a finished API: the reply itself, or its job's once it is done (polled
    with the session: a poll without one sees the upload URL's token masked)."""
    r.raise_for_status()
    while r.status_code == 202:
        time.sleep(0.05)
        r = api.get(r.json()["location"] if "location" in r.json() else str(r.url), timeout=60)
    if r.status_code != 200:
        raise RuntimeError(f"API failed: {r.status_code} {r.text[:500]}")
    return r.json()


def forget_image(api: httpx.Client, image_uuid: str) -> None:
    api.delete(f"/images/{image_uuid}")  # Direct: the bits go at once
    api.put(f"/images/{image_uuid}/actions", json={"expungeImage": {}})


def download(url: str, dest: Path, piece: int = 4 * MiB) -> float:
    """GET ``url`` into ``dest``, written sparse as rbd export writes it: seconds.

    A lean client, C speed per byte: ``http.client`` reads the body straight into one
    reused ``piece``-sized buffer (``readinto``: one copy out of the socket, as curl
    does), one memcmp against zeros per piece, and a piece of zeros is skipped instead
    of written (rbd export skips whole zero objects: 4 MiB pieces make the same file).
    """
    parts = urllib.parse.urlsplit(url)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"GET {url}: {r.status} {r.read()[:300]!r}")
        size = int(r.headers["content-length"])
        buf, zero = bytearray(piece), bytes(piece)
        view = memoryview(buf)
        with open(dest, "wb", buffering=0) as f:
            pos = 0
            while pos < size:
                want, got = min(piece, size - pos), 0
                while got < want:
                    n = r.readinto(view[got:want])
                    if not n:
                        raise RuntimeError(f"GET {url}: the body ended at byte {pos + got} of {size}")
                    got += n
                if (buf != zero) if got == piece else (view[:got] != zero[:got]):
                    os.pwrite(f.fileno(), view[:got], pos)
                pos += got
            f.truncate(size)
    finally:
        conn.close()
    return time.perf_counter() - t0


def md5_floor(path: Path) -> tuple[float, str]:
    """The hash alone: seconds of hashlib md5 over the file from the page cache (4 MiB
    reads into one buffer), and the digest (checked against ``md5sum``)."""
    for _ in file_pieces(path, 16 * MiB):  # into the page cache first
        pass
    h, buf = hashlib.md5(), bytearray(4 * MiB)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    took = time.perf_counter() - t0
    cli = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
    if cli != h.hexdigest():
        raise RuntimeError(f"hashlib and md5sum disagree on {path}")
    return took, cli


def add_url(api: httpx.Client, bs: str, url: str, name: str) -> tuple[float, str]:
    """AddImage from ``url`` until the job answers the Ready image: (seconds, image uuid)."""
    t0 = time.perf_counter()
    r = api.post("/images", json={"params": {"name": name, "url": url, "backupStorageUuids": [bs],
                                             "format": "raw"}})
    inv = job_result(api, r)["inventory"]
    return time.perf_counter() - t0, inv["uuid"]


def calculate_md5(api: httpx.Client, bs: str, image: str) -> tuple[float, str]:
    """CalculateImageHash MD5 until the job answers: (seconds, md5Sum). The image ref keeps
    the result, so the bench forgets it (CalculateImageHash SHA1 replaces it) to time again."""
    t0 = time.perf_counter()
    r = api.put(f"/images/{image}/actions", json={"calculateImageHash": {"backupStorageUuid": bs}})
    md5 = job_result(api, r)["inventory"]["md5Sum"]
    return time.perf_counter() - t0, md5


def shell(command: str, timeout: float = 900) -> float:
    """Wall time of a shell pipeline (``set -o pipefail``); raise if it failed."""
    t0 = time.perf_counter()
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{command}: {out.stderr.strip()[-400:]}")
    return time.perf_counter() - t0


class FileServer:
    """A plain HTTP server on loopback for the files of one directory, body by
    ``os.sendfile`` (no Python per byte): the source of the http:// rows, for imgstore
    and for ``curl | rbd import -`` alike."""

    def __init__(self, root: Path) -> None:
        files = root

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _open(self) -> tuple[int, int] | None:
                path = files / Path(urllib.parse.urlsplit(self.path).path).name
                if not path.is_file():
                    self.send_error(404)
                    return None
                fd = os.open(path, os.O_RDONLY)
                size = os.fstat(fd).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                return fd, size

            def do_HEAD(self) -> None:
                opened = self._open()
                if opened:
                    os.close(opened[0])

            def do_GET(self) -> None:
                opened = self._open()
                if not opened:
                    return
                fd, size = opened
                try:
                    self.wfile.flush()
                    sent = 0
                    while sent < size:
                        sent += os.sendfile(self.connection.fileno(), fd, sent, size - sent)
                finally:
                    os.close(fd)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def at_once(jobs: list) -> float:  # type: ignore[type-arg]
    """Wall time of running the callables together, one thread each; raise the first error."""
    errors: list[BaseException] = []

    def run(job) -> None:  # type: ignore[no-untyped-def]
        try:
            job()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def curl_floor(path: Path, piece: int = 4 * MiB) -> float:
    """Seconds for ``curl -T`` (the upload rows' client) to send the file to a loopback
    sink that reads the body into a reused buffer and does nothing else: the floor of
    any upload with that client on this machine, which ``rbd import`` does not pay."""
    size = path.stat().st_size
    sink = socket.create_server(("127.0.0.1", 0))

    def receive() -> None:
        conn, _ = sink.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            got, view = len(head.split(b"\r\n\r\n", 1)[1]), memoryview(bytearray(piece))
            while got < size:
                n = conn.recv_into(view)
                if not n:
                    break
                got += n
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    receiver = threading.Thread(target=receive)
    receiver.start()
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sS", "-T", str(path), "-H", "Expect:", "-o", "/dev/null",
                    f"http://127.0.0.1:{sink.getsockname()[1]}/sink"], check=True, timeout=600)
    took = time.perf_counter() - t0
    receiver.join()
    sink.close()
    return took


def loopback_floor(size: int, piece: int = 4 * MiB) -> float:
    """Seconds to move ``size`` bytes of zeros through a loopback TCP socket into a reused
    buffer, with nothing else: the floor of any HTTP export of an image of that logical
    size on this machine (rbd export moves no byte of a hole at all)."""
    server = socket.create_server(("127.0.0.1", 0))
    zero = bytes(piece)

    def send() -> None:
        conn, _ = server.accept()
        with conn:
            left = size
            while left > 0:
                conn.sendall(memoryview(zero)[:min(piece, left)])
                left -= piece

    sender = threading.Thread(target=send)
    sender.start()
    buf = bytearray(piece)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with socket.create_connection(server.getsockname()) as c:
        got = 0
        while got < size:
            n = c.recv_into(view)
            if not n:
                break
            got += n
    took = time.perf_counter() - t0
    sender.join()
    server.close()
    return took


def same_file(a: Path, b: Path) -> bool:
    def digest(p: Path) -> str:
        h = hashlib.sha256()
        for piece in file_pieces(p, 16 * MiB):
            h.update(piece)
        return h.hexdigest()
    return a.stat().st_size == b.stat().st_size and digest(a) == digest(b)


