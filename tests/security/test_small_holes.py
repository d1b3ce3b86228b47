"""Issue 13 point 10, the smaller holes of helper F's files, each against a running server.

* the pinger child's environment holds nothing of imgstore's settings (today it inherited
  IMGSTORE_ADMIN_PASSWORD);
* Expunge re-checks the image's state under its row lock: a Recover racing it never
  leaves a Ready image without its bits;
* uploads held by a node that died are expired by the survivors;
* importImages adopts only the images the pool's metadata names, unless asked for all.
"""
from __future__ import annotations

import signal
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, Api, DevCluster, Server, wait_for
from tests.integration.services.images.test_image_upload import start_upload, url_of
from tests.integration.services.images.test_images import (
    MiB,
    forget_images,
    image_data,
    images,
    storage,  # noqa: F401 - the fixture
)
from tests.integration.services.images.test_import_images import (
    TAKE_ALL,
    add_importing,
    put_metadata,
    rbd_write,
    ready,
    zstack_line,
)
from tests.integration.services.node.test_multinode import INTERVAL, nodes2  # noqa: F401 - the fixture
from tests.security.test_handles import _pinger_or_none

pytestmark = pytest.mark.ceph


def test_the_pinger_child_inherits_no_imgstore_setting(tracked_server: Server, c1: DevCluster, pool: str) -> None:
    api = tracked_server.login()
    assert api.add_ceph("env", [c1.mon_url], poolName=pool).status_code == 200
    child = wait_for(lambda: _pinger_or_none(tracked_server), 30)
    environ = open(f"/proc/{child.pid}/environ", "rb").read()
    names = {v.split(b"=", 1)[0].decode() for v in environ.split(b"\0") if v}
    assert ADMIN_PASSWORD.encode() not in environ
    assert not [n for n in names if n.startswith("IMGSTORE_")], names
    assert "PATH" in names, "what Python and librados need stays"


# ---------------------------------------------------------------- Expunge against Recover


def uploaded(api: Api, storage: str, size: int) -> str:
    inv = start_upload(api, [storage])
    r = httpx.put(url_of(inv), content=image_data(size, seed=7), headers={"X-Image-Size": str(size)}, timeout=60)
    assert r.status_code == 200 and r.json()["completed"], r.text
    return inv["uuid"]


def race(first, second, delay: float) -> tuple[httpx.Response, httpx.Response]:  # type: ignore[no-untyped-def]
    """``first()`` in a thread, ``second()`` ``delay`` s later; both answers."""
    answers: list[httpx.Response] = []
    t = threading.Thread(target=lambda: answers.append(first()))
    t.start()
    time.sleep(delay)
    other = second()
    t.join(60)
    return answers[0], other


def test_a_recover_racing_an_expunge_never_leaves_a_ready_image_without_bits(
    api: Api, c1: DevCluster, pool: str, storage: str
) -> None:
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2):
        image = uploaded(api, storage, 48 * MiB)
        assert api.delete(f"/images/{image}").status_code == 200
        expunged, recovered = race(
            lambda image=image: api.put(f"/images/{image}/actions", json={"expungeImage": {}}),
            lambda image=image: api.put(f"/images/{image}/actions", json={"recoverImage": {}}),
            delay)
        left = images(api, f"uuid={image}")
        bits = image in c1.images(pool)
        if recovered.status_code == 200:
            assert recovered.json()["inventory"]["status"] == "Ready"
            assert expunged.status_code == 409, (delay, expunged.text)
            assert [i["status"] for i in left] == ["Ready"] and bits, (delay, "Recover said Ready: it must be")
            assert api.delete(f"/images/{image}").status_code == 200
            assert api.put(f"/images/{image}/actions", json={"expungeImage": {}}).status_code == 200
        else:
            assert recovered.status_code in (404, 409), recovered.text
            assert expunged.status_code == 200, expunged.text
            assert not left and not bits, delay


def test_two_expunges_at_once_remove_the_image_once(
    api: Api, c1: DevCluster, pool: str, storage: str
) -> None:
    image = uploaded(api, storage, 48 * MiB)
    assert api.delete(f"/images/{image}").status_code == 200
    expunge = lambda: api.put(f"/images/{image}/actions", json={"expungeImage": {}})  # noqa: E731
    a, b = race(expunge, expunge, 0.02)
    assert sorted([a.status_code, b.status_code]) in ([200, 200], [200, 404], [200, 409]), (a.text, b.text)
    assert not images(api, f"uuid={image}") and image not in c1.images(pool)


# ---------------------------------------------------------------- importImages


def test_import_adopts_only_what_the_metadata_names_unless_asked_to_take_all(
    api: Api, c1: DevCluster, server: Server, pool: str, tmp_path
) -> None:
    named, planted = uuid.uuid4().hex, uuid.uuid4().hex
    rbd_write(c1, tmp_path, pool, named, image_data(MiB, seed=2))
    rbd_write(c1, tmp_path, pool, planted, image_data(MiB, seed=3))  # someone else's, or planted
    try:
        bs = add_importing(api, c1, pool, "names-only")  # first without any metadata
        time.sleep(3)  # the import runs once, after the add answered
        assert not images(api, f"uuid?={named},{planted}"), "no metadata names them: not ours to take"
        assert api.delete(f"/backup-storage/{bs}").status_code == 200

        put_metadata(c1, pool, [zstack_line(named, pool, "named", MiB)])
        bs = add_importing(api, c1, pool, "names-only-2")
        ready(api, named)
        time.sleep(2)  # the import is one pass: the planted one had its chance
        assert not images(api, f"uuid={planted}"), "an RBD image the metadata does not name is left alone"
        assert f"(add the storage with systemTag {TAKE_ALL} to adopt them): {planted}" in server.log()
        assert api.delete(f"/backup-storage/{bs}").status_code == 200

        add_importing(api, c1, pool, "take-all", take_all=True)
        ready(api, named, planted)
    finally:
        forget_images(api)


# ---------------------------------------------------------------- uploads of a dead node


def test_an_upload_held_by_a_dead_node_is_failed_by_a_survivor(
    nodes2: list[Server], c1: DevCluster, pool: str
) -> None:
    first, second = nodes2
    api = first.login()
    bs = api.add_ceph("uploads", [c1.mon_url], poolName=pool).json()["inventory"]["uuid"]
    inv = start_upload(api, [bs])
    url = url_of(inv)
    data = image_data(8 * MiB, seed=5)
    r = httpx.put(url, content=data[:4 * MiB], timeout=60,
                  headers={"Content-Range": f"bytes 0-{4 * MiB - 1}/{len(data)}"})
    assert r.status_code == 200 and r.json()["offset"] == 4 * MiB, r.text
    assert inv["uuid"] in c1.images(pool), "the partial image is in the pool"

    first.stop(signal.SIGKILL)  # its writer, in its memory, is gone
    survivor = second.login()

    def failed() -> dict | None:
        [image] = images(survivor, f"uuid={inv['uuid']}")
        return image if image["status"] == "Error" else None

    image = wait_for(failed, 2 * INTERVAL + 10)
    assert "node[node-1]" in image["statusReason"] or "node-1" in str(image), image
    # no partial image left behind, once the OSDs let the dead writer's watch go (~30 s)
    wait_for(lambda: inv["uuid"] not in c1.images(pool), 60, every=1)
    details = survivor.get(f"/images/upload-job/details/{inv['uuid']}").json()["existingJobDetails"]
    assert details[0]["longJobState"] == "Failed" and details[0]["imageUploadUrl"] is None
    again = httpx.put(url.replace(first.url, second.url), content=data[4 * MiB:], timeout=60,
                      headers={"Content-Range": f"bytes {4 * MiB}-{len(data) - 1}/{len(data)}"})
    assert again.status_code == 409 and "add the image again" in again.json()["error"]["details"]
