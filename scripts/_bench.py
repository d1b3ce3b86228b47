"""What every ``scripts/bench_*.py`` needs: the dev clusters' details, the ceph CLI on them,
and a real server on loopback with a free port (``tests/servers.py``: the same start and
login the tests use). Not a benchmark itself."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import Api, Server, free_port, password_digest  # noqa: E402

__all__ = ["ROOT", "Api", "Server", "ceph", "cluster_env", "free_port", "password_digest"]


def cluster_env(name: str) -> dict[str, str]:
    """The ``export`` lines of ``scripts/devcluster.sh env NAME`` (CEPH_CONF, ports...)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "devcluster.sh"), "env", name],
                         capture_output=True, text=True, check=True).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            k, _, v = words[1].partition("=")
            env[k] = v
    return env


def ceph(env: dict[str, str], *args: str) -> str:
    """Run the admin ``ceph`` CLI against the dev cluster of ``env``; its stdout."""
    return subprocess.run(["ceph", "-c", env["CEPH_CONF"], "--connect-timeout", "10", *args],
                          capture_output=True, text=True, check=True).stdout
