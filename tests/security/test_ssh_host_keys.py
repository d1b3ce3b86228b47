"""Trust, points 1 and 2: a mon's SSH host key is pinned, and a moved mon needs its
credentials again.

A fake mon (an in-process asyncssh server on 127.0.0.1 with a fresh host key) records
every login attempt and every password it is sent. The attacks: an add whose operator
named another key, a pinned mon whose address now answers with another key, and an
update that moves a mon without its password. In none of them may the password reach
the fake server.
"""
from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import ADMIN_PASSWORD, Api, DevCluster, Server

pytestmark = pytest.mark.ceph

MONS = "/backup-storage/ceph/mons"


@dataclass
class FakeMon:
    """An SSH server standing in for a mon: it records, and lets nobody in."""

    port: int
    fingerprint: str
    usernames: list[str] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)


def _fake_server_class(fake: FakeMon) -> type[asyncssh.SSHServer]:
    class Recorder(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            fake.usernames.append(username)
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            fake.passwords.append(password)
            return False

    return Recorder


@pytest.fixture
def fake_mon() -> Iterator[FakeMon]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    fake = FakeMon(0, key.get_fingerprint("sha256"))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncssh.SSHAcceptor] = {}

    async def serve() -> None:
        holder["server"] = await asyncssh.create_server(
            _fake_server_class(fake), "127.0.0.1", 0, server_host_keys=[key]
        )
        fake.port = holder["server"].get_port()  # port 0: never one a test server picked
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    assert started.is_set()
    yield fake
    holder["server"].close()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def host_key_fingerprint(c: DevCluster) -> str:
    """The dev sshd's real host key, as OpenSSH prints it."""
    path = Path(c.env["CEPH_DIR"]) / "ssh" / "ssh_host_ed25519_key.pub"
    return asyncssh.read_public_key(path).get_fingerprint("sha256")


def fake_url(c: DevCluster, fake: FakeMon, host: str = "127.0.0.1", fingerprint: str | None = None) -> str:
    url = c.mon_url_with(ssh_port=fake.port).replace("@127.0.0.1", f"@{host}")
    return url + (f"&sshHostKeyFingerprint={fingerprint}" if fingerprint else "")


def mon_of(api: Api, uuid: str) -> dict:
    [inv] = [s for s in api.storages() if s["uuid"] == uuid]
    [mon] = inv["mons"]
    return mon


def act(api: Api, mon_uuid: str, action: str, **params: object):  # type: ignore[no-untyped-def]
    return api.put(f"{MONS}/{mon_uuid}/actions", json={action: params})


# ------------------------------------------------------------------ point 1


@pytest.mark.real_ceph
def test_first_contact_pins_the_real_host_key(api: Api, c1: DevCluster, pool: str) -> None:
    r = api.add_ceph("pinned", [c1.mon_url], poolName=pool)
    assert r.status_code == 200, r.text
    [mon] = r.json()["inventory"]["mons"]
    assert mon["sshHostKeyFingerprint"] == host_key_fingerprint(c1)
    assert mon_of(api, r.json()["inventory"]["uuid"])["sshHostKeyFingerprint"] == host_key_fingerprint(c1)
    found = api.get("/backup-storage/ceph", params={"q": f"mons.sshHostKeyFingerprint={host_key_fingerprint(c1)}"})
    assert [i["uuid"] for i in found.json()["inventories"]] == [r.json()["inventory"]["uuid"]], found.text


@pytest.mark.real_ceph
def test_an_add_naming_another_key_sends_no_password(api: Api, c1: DevCluster, fake_mon: FakeMon) -> None:
    expected = host_key_fingerprint(c1)
    r = api.add_ceph("impostor", [fake_url(c1, fake_mon, fingerprint=expected)])
    assert r.status_code == 409, r.text
    details = r.json()["error"]["details"]
    assert expected in details and fake_mon.fingerprint in details, details
    assert fake_mon.passwords == [] and fake_mon.usernames == []
    assert api.storages() == []


def test_an_operator_given_fingerprint_must_look_like_one(api: Api, c1: DevCluster) -> None:
    r = api.add_ceph("bad-fp", [c1.mon_url + "&sshHostKeyFingerprint=MD5:00:11"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "SYS.1007", r.text
    assert api.storages() == []


@pytest.mark.real_ceph
def test_a_pinned_mon_answering_with_another_key_gets_no_password(
    api: Api, server: Server, c1: DevCluster, pool: str, fake_mon: FakeMon
) -> None:
    real = host_key_fingerprint(c1)
    uuid = api.add_ceph("moved-port", [c1.mon_url], poolName=pool).json()["inventory"]["uuid"]
    mon = mon_of(api, uuid)
    # the mon's sshd now answers elsewhere on the same host: the pin stays
    r = act(api, mon["monUuid"], "updateCephBackupStorageMon", sshPort=fake_mon.port,
            sshPassword=c1.env["SSH_PASSWORD"])
    assert r.status_code == 200, r.text
    assert mon_of(api, uuid)["sshHostKeyFingerprint"] == real
    # every SSH use goes through the pin: a delete must not log in to the impostor
    r = api.delete(f"/backup-storage/{uuid}")
    assert r.status_code == 503 and r.json()["error"]["code"] == "SYS.1004", r.text
    assert real in r.text and fake_mon.fingerprint in r.text, r.text
    assert fake_mon.passwords == [] and fake_mon.usernames == []
    assert real in server.log() and fake_mon.fingerprint in server.log()
    # AddMon with the impostor's address, naming the real key: refused, both keys named
    r = api.post(f"/backup-storage/ceph/{uuid}/mons",
                 json={"params": {"monUrls": [fake_url(c1, fake_mon, "localhost", real)]}})
    assert r.status_code >= 400 and real in r.text and fake_mon.fingerprint in r.text, r.text
    assert fake_mon.passwords == [] and fake_mon.usernames == []

    # point 1, accepting: a malformed fingerprint is refused; without one, the key the
    # host offers now is pinned (read in the key exchange: still no login)
    r = act(api, mon["monUuid"], "acceptCephBackupStorageMonHostKey", sshHostKeyFingerprint="SHA256:nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "SYS.1007", r.text
    r = act(api, mon["monUuid"], "acceptCephBackupStorageMonHostKey")
    assert r.status_code == 200, r.text
    assert mon_of(api, uuid)["sshHostKeyFingerprint"] == fake_mon.fingerprint
    assert fake_mon.passwords == [] and fake_mon.usernames == []

    # back to the real sshd: its key is refused until accepted, by name this time
    r = act(api, mon["monUuid"], "updateCephBackupStorageMon", sshPort=int(c1.env["SSH_PORT"]),
            sshPassword=c1.env["SSH_PASSWORD"])
    assert r.status_code == 200, r.text
    r = api.delete(f"/backup-storage/{uuid}")
    assert r.status_code == 503, r.text
    r = act(api, mon["monUuid"], "acceptCephBackupStorageMonHostKey", sshHostKeyFingerprint=real)
    assert r.status_code == 200 and mon_of(api, uuid)["sshHostKeyFingerprint"] == real, r.text
    r = api.delete(f"/backup-storage/{uuid}")
    assert r.status_code == 200, r.text
    assert f"client.imgstore.{uuid}" not in c1.clients()


@pytest.mark.real_ceph
def test_accept_from_the_cli(api: Api, server: Server, c1: DevCluster, pool: str, tmp_path: Path) -> None:
    uuid = api.add_ceph("cli-accept", [c1.mon_url], poolName=pool).json()["inventory"]["uuid"]
    mon_uuid = mon_of(api, uuid)["monUuid"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSTORE_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imgstore.cli.commands", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    assert cli("login", "--url", server.url, "--password", ADMIN_PASSWORD).returncode == 0
    real = host_key_fingerprint(c1)
    out = cli("AcceptCephBackupStorageMonHostKey", f"monUuid={mon_uuid}", f"sshHostKeyFingerprint={real}", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert real in out.stdout


# ------------------------------------------------------------------ point 2


@pytest.mark.parametrize("change", [{"hostname": "localhost"}, {"sshPort": 2222}, {"sshUsername": "root"}])
@pytest.mark.real_ceph
def test_moving_a_mon_without_its_password_is_refused(api: Api, c1: DevCluster, pool: str, change: dict) -> None:
    uuid = api.add_ceph("move", [c1.mon_url], poolName=pool).json()["inventory"]["uuid"]
    before = mon_of(api, uuid)
    r = act(api, before["monUuid"], "updateCephBackupStorageMon", **change)
    assert r.status_code == 400 and r.json()["error"]["code"] == "SYS.1007", r.text
    assert mon_of(api, uuid) == before
    # the same values again are no move; a monPort change is none either
    same = {k: before[k] for k in change}
    r = act(api, before["monUuid"], "updateCephBackupStorageMon", **same)
    assert r.status_code == 200, r.text


def test_a_new_hostname_forgets_the_old_key(api: Api, c1: DevCluster, pool: str) -> None:
    uuid = api.add_ceph("rehost", [c1.mon_url], poolName=pool).json()["inventory"]["uuid"]
    mon = mon_of(api, uuid)
    r = act(api, mon["monUuid"], "updateCephBackupStorageMon", hostname="localhost",
            sshPassword=c1.env["SSH_PASSWORD"])
    assert r.status_code == 200, r.text
    assert mon_of(api, uuid)["sshHostKeyFingerprint"] is None
    # the next contact learns it again (trust on first use, as at an add)
    r = api.delete(f"/backup-storage/{uuid}")
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ key-based login


@pytest.fixture
def ssh_key(c1: DevCluster, tmp_path: Path) -> Iterator[Path]:
    """A fresh key pair whose public half the dev ssh user accepts, removed afterwards."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment="imgstore-test-key")
    path = tmp_path / "id_ed25519"
    key.write_private_key(path)
    path.chmod(0o600)
    line = key.export_public_key().decode().strip()
    user = pwd.getpwnam(c1.env["SSH_USER"])
    ssh_dir = Path(user.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, user.pw_uid, user.pw_gid)
    auth = ssh_dir / "authorized_keys"
    with open(auth, "a") as f:
        f.write(line + "\n")
    os.chown(auth, user.pw_uid, user.pw_gid)
    auth.chmod(0o600)
    yield path
    kept = [ln for ln in auth.read_text().splitlines() if ln.strip() != line]
    auth.write_text("".join(ln + "\n" for ln in kept))


@pytest.mark.real_ceph
def test_a_configured_key_lets_a_mon_url_carry_no_password(
    fresh_server: Server, c1: DevCluster, pool: str, ssh_key: Path, fake_mon: FakeMon
) -> None:
    passwordless = c1.mon_url.replace(f":{c1.env['SSH_PASSWORD']}@", "@")
    fresh_server.env["IMGSTORE_SSH_PRIVATE_KEY"] = str(ssh_key)
    api = fresh_server.start().login()
    r = api.add_ceph("by-key", [passwordless], poolName=pool)
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    assert inv["status"] == "Connected" and inv["mons"][0]["sshHostKeyFingerprint"] == host_key_fingerprint(c1)
    mon_uuid = inv["mons"][0]["monUuid"]
    # a password is stored again (no move: the same values)...
    r = act(api, mon_uuid, "updateCephBackupStorageMon", sshPassword=c1.env["SSH_PASSWORD"])
    assert r.status_code == 200, r.text
    # ...then the mon moves without it: allowed with a key, and the stored password is dropped
    r = act(api, mon_uuid, "updateCephBackupStorageMon", hostname="localhost")
    assert r.status_code == 200 and mon_of(api, inv["uuid"])["sshHostKeyFingerprint"] is None, r.text
    r = act(api, mon_uuid, "updateCephBackupStorageMon", sshPort=fake_mon.port)
    assert r.status_code == 200, r.text
    r = api.delete(f"/backup-storage/{inv['uuid']}")  # the impostor refuses the key
    assert r.status_code == 503, r.text
    assert fake_mon.usernames and fake_mon.passwords == []
    r = act(api, mon_uuid, "updateCephBackupStorageMon", sshPort=int(c1.env["SSH_PORT"]))
    assert r.status_code == 200, r.text
    assert api.delete(f"/backup-storage/{inv['uuid']}").status_code == 200
    assert f"client.imgstore.{inv['uuid']}" not in c1.clients()


def test_without_a_key_a_mon_url_needs_a_password(api: Api, c1: DevCluster) -> None:
    passwordless = c1.mon_url.replace(f":{c1.env['SSH_PASSWORD']}@", "@")
    r = api.add_ceph("no-password", [passwordless])
    assert r.status_code == 400 and r.json()["error"]["code"] == "SYS.1007", r.text
