"""Ceph failures as ZStack ErrorCodes (``services/node/ceph_errors``), the one place
where a ``CephError`` becomes an ``ApiError``."""

from __future__ import annotations

import ast

import pytest

from imgstore import ceph
from imgstore.errors import INVALID_ARGUMENT, OPERATION_ERROR
from imgstore.services.node import ceph_errors
from imgstore.services.node.ceph_errors import ceph_error, is_ceph_error
from tests.servers import ROOT

KINDS = [getattr(ceph, n) for n in ceph.__all__
         if isinstance(getattr(ceph, n), type) and issubclass(getattr(ceph, n), ceph.CephError)]


def _make(kind: type[ceph.CephError], message: str, host: str | None) -> ceph.CephError:
    if kind is ceph.SshHostKeyMismatch:
        return kind(message, host, "SHA256:old", "SHA256:new")
    return kind(message, host)


def test_every_error_of_the_ceph_layer_has_its_own_line() -> None:
    """A new kind of Ceph error must be given its ErrorCode, not fall to the default."""
    assert len(KINDS) >= 16
    assert [k.__name__ for k in KINDS if k not in ceph_errors._AS] == []


@pytest.mark.parametrize(("kind", "code", "status"), [
    (ceph.MonUrlError, INVALID_ARGUMENT, 400),
    (ceph.InvalidName, INVALID_ARGUMENT, 400),
    (ceph.SshAuthFailed, OPERATION_ERROR, 400),
    (ceph.SshHostKeyMismatch, OPERATION_ERROR, 409),
    (ceph.PoolNotFound, OPERATION_ERROR, 400),
    (ceph.ClusterUnreachable, OPERATION_ERROR, 503),
    (ceph.CephPermissionDenied, OPERATION_ERROR, 503),
    (ceph.ImageNoSpace, OPERATION_ERROR, 503),
    (ceph.ImageNotFound, OPERATION_ERROR, 503),
])
def test_a_ceph_error_reads_as_its_error_code_naming_the_mon(kind: type[ceph.CephError], code: object,
                                                              status: int) -> None:
    e = ceph_error(_make(kind, "it failed", "v1:10.0.0.1:6789"))
    assert (e.kind, e.status) == (code, status)
    assert e.details == "mon[v1:10.0.0.1:6789]: it failed"
    assert e.opaque == {"cephError": kind.__name__}
    assert is_ceph_error(e, kind) and not is_ceph_error(e, ceph.CephError)


def test_a_service_may_say_what_the_failure_means_for_its_request() -> None:
    e = ceph_error(ceph.ImageBusy("image p/i has clones: p/c"), status=409,
                   details="cannot remove the bits of image[uuid:i]: it has clones")
    assert (e.kind, e.status) == (OPERATION_ERROR, 409)
    assert e.details == "cannot remove the bits of image[uuid:i]: it has clones"
    assert is_ceph_error(e, ceph.ImageBusy)
    assert ceph_error(ceph.CephTimeout("slow"), "mon1:22").details == "mon[mon1:22]: slow"
    assert ceph_error(ceph.CephTimeout("slow")).details == "slow"


def test_services_take_ceph_error_from_its_one_module() -> None:
    """handles.py uses ceph_error too: importing it from there would make two ways."""
    root = ROOT / "imgstore"
    elsewhere = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module != "imgstore.services.node.ceph_errors"
                    and {"ceph_error", "is_ceph_error"} & {a.name for a in node.names}):
                elsewhere.append(f"{path.relative_to(root.parent)}: from {node.module}")
    assert elsewhere == []
