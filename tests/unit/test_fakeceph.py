"""The fake Ceph of ``scripts/test.sh --quick`` (tests/fakeceph) keeps step with the facade
it stands behind: what the facade offers that touches a cluster is faked, with the real
call's parameters, so a change of the facade shows here and not as a quick loop that
quietly tests something else."""
from __future__ import annotations

import inspect

import pytest

import imgstore.ceph
from tests import fakeceph

#: what the facade exports that never touches a cluster: errors, values, pure functions
PURE = {
    "CHUNK_SIZE", "READ_AHEAD", "WRITE_WINDOW", "Capacity", "Health", "MonFacts", "MonUrl", "RadosSource",
    "WriteResult", "check_fingerprint", "check_pool_name", "rbd_client_caps", "zero_block",
    "ZERO_GRAIN", "SparsePiece", "runs_to_write",
    "CephCommandFailed", "CephError", "CephPermissionDenied", "CephTimeout", "CephToolsMissing",
    "ClusterUnreachable", "ImageBusy", "ImageExists", "ImageNoSpace", "ImageNotFound", "ImageSizeMismatch",
    "InvalidName", "MonUrlError", "PoolNotFound", "SshAuthFailed", "SshHostKeyMismatch", "SshUnreachable",
    # only behind osd_checksums_available(), which the fake answers False: never reached
    "ImageChecksums",
}


def test_every_name_of_the_facade_that_touches_a_cluster_is_faked() -> None:
    assert set(imgstore.ceph.__all__) - PURE == set(fakeceph.FAKES)


def _shape(fn: object) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults of the parameters (annotations may name fake types)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]  # type: ignore[arg-type]


def _public_methods(cls: type) -> dict[str, object]:
    """Methods by their parameters; properties and class methods by their kind; a fake
    that subclasses the real class counts what it inherits."""
    attrs: dict[str, object] = {}
    for klass in reversed(cls.__mro__[:-1]):
        attrs.update(vars(klass))
    out: dict[str, object] = {}
    for name, attr in attrs.items():
        if name.startswith("_") and name not in ("__init__", "__aenter__", "__aexit__"):
            continue
        if isinstance(attr, (property, classmethod, staticmethod)):
            out[name] = type(attr).__name__
        elif callable(attr):
            out[name] = _shape(attr)
    return out


@pytest.mark.parametrize("name", sorted(fakeceph.FAKES))
def test_a_fake_takes_the_parameters_of_the_real_call(name: str) -> None:
    real, fake = getattr(imgstore.ceph, name), fakeceph.FAKES[name]
    assert real is not fake, "tests/fakeceph is installed in the test process itself"
    if inspect.isclass(real):
        wanted, got = _public_methods(real), _public_methods(fake)  # type: ignore[arg-type]
        assert {n: s for n, s in got.items() if n in wanted} == wanted
        assert set(wanted) <= set(got), f"{name} lacks {sorted(set(wanted) - set(got))}"
    else:
        assert _shape(fake) == _shape(real)
