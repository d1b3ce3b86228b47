"""Ceph failures as ZStack ErrorCodes: the one place a ``CephError`` becomes an ``ApiError``.

The Ceph layer raises its own errors (``imgstore.ceph.exceptions``) and knows nothing of
HTTP; services catch a specific one where it changes what they do (an image already
gone, a busy image), and turn every one they pass on to a client into an ErrorCode here,
so the code, the HTTP status and the ``opaque.cephError`` tag are decided once per kind.
"""

from __future__ import annotations

from imgstore import ceph
from imgstore.errors import INVALID_ARGUMENT, OPERATION_ERROR, ApiError, ErrorKind

__all__ = ["ceph_error", "is_ceph_error"]

# How each Ceph failure reads to a client: (code, HTTP status). Bad input is SYS.1007,
# the rest SYS.1006; 503 where asking again later may work. Most specific class first.
_AS: dict[type[ceph.CephError], tuple[ErrorKind, int]] = {
    ceph.MonUrlError: (INVALID_ARGUMENT, 400),
    ceph.InvalidName: (INVALID_ARGUMENT, 400),
    ceph.SshAuthFailed: (OPERATION_ERROR, 400),
    ceph.SshHostKeyMismatch: (OPERATION_ERROR, 409),  # the host's key changed: an operator must accept it
    ceph.CephToolsMissing: (OPERATION_ERROR, 400),
    ceph.PoolNotFound: (OPERATION_ERROR, 400),
    ceph.SshUnreachable: (OPERATION_ERROR, 503),
    ceph.CephTimeout: (OPERATION_ERROR, 503),
    ceph.ClusterUnreachable: (OPERATION_ERROR, 503),
    ceph.CephPermissionDenied: (OPERATION_ERROR, 503),
    ceph.CephCommandFailed: (OPERATION_ERROR, 503),
    ceph.ImageExists: (OPERATION_ERROR, 503),
    ceph.ImageNotFound: (OPERATION_ERROR, 503),
    ceph.ImageBusy: (OPERATION_ERROR, 503),
    ceph.ImageNoSpace: (OPERATION_ERROR, 503),
    ceph.ImageSizeMismatch: (OPERATION_ERROR, 503),
    ceph.CephError: (OPERATION_ERROR, 503),
}


def ceph_error(e: ceph.CephError, host: str | None = None, *, details: str | None = None,
               status: int | None = None) -> ApiError:
    """``e`` as the ErrorCode a client reads, naming the mon host.

    ``details`` replaces the text where the service can say what the failure means for
    the request (e.g. "the image stays until its clones are gone"); ``status`` where the
    same failure means something else there (a missing image of an export is a 404).
    """
    kind, default = next(v for t, v in _AS.items() if isinstance(e, t))
    if details is None:
        where = host or e.host
        details = f"mon[{where}]: {e}" if where else str(e)
    return ApiError(kind, details, status=status or default, opaque={"cephError": type(e).__name__})


def is_ceph_error(e: ApiError, kind: type[ceph.CephError]) -> bool:
    """Was this ApiError made from a Ceph failure of ``kind``?"""
    return e.opaque is not None and e.opaque.get("cephError") == kind.__name__
