"""scripts/devcluster.sh install: the policy-rc.d it writes (so that installing openssh-server
starts no sshd on 0.0.0.0:22) is gone again when the install fails half-way."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1): the test hides the machine's /usr/sbin behind a tmpfs",
)


def test_failed_install_leaves_no_policy_rc_d(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    # every package reads as missing, and apt-get fails the way a broken mirror makes it fail
    (fake / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (fake / "apt-get").write_text(
        "#!/bin/sh\n[ -e /usr/sbin/policy-rc.d ] && echo 'policy in place' >&2\nexit 100\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    script = (
        "mount -t tmpfs none /usr/sbin || exit 99\n"  # a private, empty /usr/sbin
        f"PATH={fake}:$PATH bash {ROOT}/scripts/devcluster.sh install\n"
        "echo rc=$?\nls -A /usr/sbin\n"
    )
    out = subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=30)
    if out.returncode == 99 or "rc=" not in out.stdout:
        pytest.skip(f"cannot mount a private /usr/sbin here: {out.stderr.strip()}")
    assert "policy in place" in out.stderr  # the install ran under the policy...
    lines = out.stdout.split()
    assert lines[0] == "rc=100"  # ...failed...
    assert lines[1:] == []  # ...and took the policy away again
