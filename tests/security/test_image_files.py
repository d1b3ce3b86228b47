"""Point 6 of the Trust issue: image files cannot reach outside themselves or blow up.

A server of the module's own reads ``file://`` images from one allowed directory, with
``image_max_virtual_size`` at 20 TiB. Each image is crafted by the test with
``qemu-img create`` and added through AddImage, as an attacker with an account would:

* a VMDK child whose ``parentFileNameHint`` names a VMDK elsewhere on the server (a
  "secret"): before the fix it became a Ready image holding the secret's bytes;
* a qcow2 with a backing file, and one with an external data file;
* a 32 TiB qcow2 of a few MB (over the maximum), and a 4 TiB one (under the maximum,
  over the pool's capacity): before the fix the server made an RBD image of that size
  and converted for hours.

Each is refused (SYS.1002 with a SYS.1007 or capacity cause), quickly, and leaves no
image row and no RBD image in the pool (``rbd ls`` with c1's admin conf).

The same server caps sources of unknown length at 8 MiB (``image_max_source_bytes``: a
chunked upload without a size that sends more is refused) and conversions at 3 s
(``image_convert_timeout``: a 4 GiB qcow2 of zeros takes longer to read through qemu).
"""
from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, DevCluster, Server

pytestmark = pytest.mark.ceph

MiB, TiB = 1 << 20, 1 << 40
MAX_SOURCE = 8 * MiB  # the module server's image_max_source_bytes
CONVERT_TIMEOUT = 3  # the module server's image_convert_timeout, seconds
SECRET = b"TOPSECRET-of-the-server" * 1000


class Setup:
    def __init__(self, api: Api, c1: DevCluster, pool: str, storage: str, allowed: Path,
                 private: Path) -> None:
        self.api, self.c1, self.pool, self.storage = api, c1, pool, storage
        self.allowed, self.private = allowed, private

    def rbd_ls(self) -> set[str]:
        return self.c1.images(self.pool)

    def add(self, path: Path, fmt: str, timeout: float = 180) -> tuple[int, dict, float]:
        """AddImage of a file:// URL; the job's status, body and seconds taken."""
        name = f"img-{uuid.uuid4().hex[:8]}"
        body = {"params": {"name": name, "url": f"file://{path}", "format": fmt,
                           "backupStorageUuids": [self.storage]}}
        started = time.monotonic()
        final = self.api.wait_job(self.api.post("/images", json=body), timeout=timeout)
        return final.status_code, final.json(), time.monotonic() - started

    def images_named(self) -> list[dict]:
        return self.api.get("/images").json().get("inventories", [])


@pytest.fixture(scope="module")
def setup(c1: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("image-files")
    allowed, private = root / "allowed", root / "private"
    allowed.mkdir()
    private.mkdir()
    srv = Server(root / "srv")
    srv.data_dir.mkdir()
    srv.env["IMGSTORE_FILE_ALLOW_DIRS"] = str(allowed)
    srv.env["IMGSTORE_IMAGE_MAX_VIRTUAL_SIZE"] = str(20 * TiB)
    srv.env["IMGSTORE_IMAGE_MAX_SOURCE_BYTES"] = str(MAX_SOURCE)
    srv.env["IMGSTORE_IMAGE_CONVERT_TIMEOUT"] = str(CONVERT_TIMEOUT)
    pool = c1.create_pool(f"t-{uuid.uuid4().hex[:10]}")
    try:
        api = srv.start().login()
        r = api.add_ceph("images", [c1.mon_url], poolName=pool)
        assert r.status_code == 200, r.text
        yield Setup(api, c1, pool, r.json()["inventory"]["uuid"], allowed, private)
        for inv in api.storages():
            api.delete(f"/backup-storage/{inv['uuid']}")
    finally:
        srv.stop()
        srv.drop_database()
        c1.delete_pool(pool)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def assert_refused(s: Setup, path: Path, fmt: str, words: str, cause_code: str = "SYS.1007",
                   within: float = 60.0) -> dict:
    before, images_before = s.rbd_ls(), s.images_named()
    status, body, took = s.add(path, fmt, timeout=within)
    assert status == 503, f"the image was accepted: {body}"
    error = body["error"]
    assert error["code"] == "SYS.1002", error
    assert error["cause"]["code"] == cause_code, error
    assert words in error["cause"]["details"], error
    assert "TOPSECRET" not in str(body)
    assert took < within, f"refused only after {took:.0f} s"
    assert s.rbd_ls() == before, "an RBD image was left (or made) for a refused file"
    assert s.images_named() == images_before, "a refused image stays in the inventory"
    return error


def test_a_vmdk_child_of_a_file_elsewhere_on_the_server_is_refused(setup: Setup) -> None:
    secret_raw = setup.private / "secret.raw"
    secret_raw.write_bytes(SECRET + bytes(-len(SECRET) % 512))
    parent = setup.private / "secret.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", str(secret_raw), str(parent))
    child = setup.allowed / "child.vmdk"
    qemu_img("create", "-f", "vmdk", "-b", str(parent), "-F", "vmdk", str(child))
    assert b"parentFileNameHint" in child.read_bytes()[:4096]
    assert_refused(setup, child, "vmdk", "parent")


def test_a_qcow2_with_a_backing_file_is_refused(setup: Setup) -> None:
    base = setup.private / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "1M")
    child = setup.allowed / "backed.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(child))
    assert_refused(setup, child, "qcow2", "backing file")


def test_a_qcow2_with_an_external_data_file_is_refused(setup: Setup) -> None:
    data = setup.private / "data.raw"
    image = setup.allowed / "datafile.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data},data_file_raw=on", str(image), "1M")
    data.write_bytes(SECRET[:1 << 20])
    assert_refused(setup, image, "qcow2", "data file")


def test_a_small_qcow2_of_32_tib_is_refused_before_an_rbd_image_exists(setup: Setup) -> None:
    image = setup.allowed / "huge.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "32T")
    assert image.stat().st_size < 8 << 20
    error = assert_refused(setup, image, "qcow2", "virtual size", within=30)
    assert "maximum" in error["cause"]["details"]


def test_a_qcow2_bigger_than_the_pool_is_refused_before_an_rbd_image_exists(setup: Setup) -> None:
    image = setup.allowed / "big.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "4T")
    assert_refused(setup, image, "qcow2", "not enough capacity", cause_code="SYS.1006", within=30)


def test_a_plain_qcow2_and_vmdk_still_go_in(setup: Setup) -> None:
    raw = setup.private / "plain.raw"
    raw.write_bytes(SECRET + bytes((1 << 20) - len(SECRET)))
    for fmt in ("qcow2", "vmdk"):
        image = setup.allowed / f"plain.{fmt}"
        qemu_img("convert", "-f", "raw", "-O", fmt, str(raw), str(image))
        status, body, _ = setup.add(image, fmt)
        assert status == 200, str(body.get("error"))
        assert body["inventory"]["size"] == 1 << 20


def test_an_upload_of_unknown_length_is_cut_off_at_the_cap(setup: Setup) -> None:
    before = setup.rbd_ls()
    body = {"params": {"name": "endless", "url": "upload://", "format": "raw",
                       "backupStorageUuids": [setup.storage]}}
    inv = setup.api.wait_job(setup.api.post("/images", json=body)).json()["inventory"]
    url = inv["backupStorageRefs"][0]["uploadUrl"]

    def endless() -> Iterator[bytes]:  # chunked: no Content-Length, no size header
        for _ in range(4 * MAX_SOURCE // MiB):
            yield b"\x5a" * MiB

    r = httpx.put(url, content=endless(), timeout=60)
    assert r.status_code >= 400, r.text
    assert r.json()["error"]["code"] == "SYS.1007", r.text
    assert "image_max_source_bytes" in r.text
    [image] = [i for i in setup.images_named() if i["uuid"] == inv["uuid"]]
    assert image["status"] == "Error"
    assert setup.rbd_ls() == before, "the partial RBD image stays"


def test_a_conversion_over_its_time_limit_fails_and_leaves_nothing(setup: Setup) -> None:
    image = setup.allowed / "slow.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "4G")  # 12 s to read through qemu-nbd here, 6 idle
    error = assert_refused(setup, image, "qcow2", "image_convert_timeout", cause_code="SYS.1006")
    assert f"longer than {CONVERT_TIMEOUT} s" in error["cause"]["details"]
