"""What every ``scripts/bench_*.py`` needs: the dev clusters' details, the ceph CLI on them,
and a free loopback port. Not a benchmark itself."""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def free_port() -> int:
    """A port nobody listens on at 127.0.0.1 (below 32768, clear of ephemeral ports)."""
    for port in range(24000 + os.getpid() % 4000, 32000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    raise RuntimeError("no free port below 32000")
