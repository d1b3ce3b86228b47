"""Issue 13 point 10, the smaller holes of helper F's files, each against a running server.

* the pinger child's environment holds nothing of imgstore's settings (today it inherited
  IMGSTORE_ADMIN_PASSWORD);
* Expunge re-checks the image's state under its row lock: a Recover racing it never
  leaves a Ready image without its bits;
* uploads held by a node that died are expired by the survivors;
* importImages adopts only the images the pool's metadata names, unless asked for all.
"""
from __future__ import annotations

import pytest

from tests.conftest import ADMIN_PASSWORD, DevCluster, Server, wait_for
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
