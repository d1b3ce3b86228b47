"""The ``imgstore`` command against a real server, run as a user runs it (a subprocess)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, Api, DevCluster, Server, run_command, wait_for
from tests.servers import READY_PATH, free_port

Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def cli(config_home: Path) -> Cli:
    """``imgstore <args>`` with its own XDG_CONFIG_HOME; returns the finished process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSTORE_")}
    env.update(XDG_CONFIG_HOME=str(config_home), COLUMNS="200")

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run_command([sys.executable, "-m", "imgstore.cli.commands", *args], env, input=input)

    return run


@pytest.fixture
def logged_in(cli: Cli, server: Server) -> Cli:
    out = cli("login", "--url", server.url, "--password", ADMIN_PASSWORD)
    assert out.returncode == 0, out.stderr
    return cli


def session_of(config_home: Path) -> dict:
    return json.loads((config_home / "imgstore" / "session.json").read_text())


def valid(server: Server, session: str) -> bool:
    return httpx.get(f"{server.url}/zstack/v1/accounts/sessions/{session}/valid").json()["valid"]


def assert_one_error_line(out: subprocess.CompletedProcess, code: int, prefix: str) -> None:
    assert out.returncode == code, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), out.stderr


# ------------------------------------------------------------------ sessions


def test_login_keeps_a_valid_session_in_a_private_file(cli: Cli, server: Server, config_home: Path) -> None:
    out = cli("login", "--url", f"{server.url}/zstack/v1", "--password", ADMIN_PASSWORD)
    assert out.returncode == 0, out.stderr
    path = config_home / "imgstore" / "session.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = session_of(config_home)
    assert saved["url"] == server.url and valid(server, saved["session"])
    assert saved["session"] not in out.stdout and ADMIN_PASSWORD not in out.stdout


def test_login_prompts_for_the_password(cli: Cli, server: Server, config_home: Path) -> None:
    out = cli("login", "--url", server.url, input=f"{ADMIN_PASSWORD}\n")
    assert out.returncode == 0, out.stderr
    assert valid(server, session_of(config_home)["session"])


def test_a_wrong_password_is_one_error_line(cli: Cli, server: Server, config_home: Path) -> None:
    out = cli("login", "--url", server.url, "--password", "wrong")
    assert_one_error_line(out, 1, "error ID.1000: ")
    assert not (config_home / "imgstore" / "session.json").exists()


def test_logout_ends_and_forgets_the_session(logged_in: Cli, server: Server, config_home: Path) -> None:
    session = session_of(config_home)["session"]
    out = logged_in("logout")
    assert out.returncode == 0, out.stderr
    assert not (config_home / "imgstore" / "session.json").exists()
    assert not valid(server, session)
    assert_one_error_line(logged_in("QueryBackupStorage"), 1, "error ID.1001: not logged in")


def test_an_expired_session_says_to_log_in_again(logged_in: Cli, server: Server, config_home: Path) -> None:
    httpx.delete(f"{server.url}/zstack/v1/accounts/sessions/{session_of(config_home)['session']}")
    out = logged_in("QueryBackupStorage")
    assert_one_error_line(out, 1, "error ID.1001: ")
    assert "imgstore login" in out.stderr


# ------------------------------------------------------------------ API calls


def test_query_prints_a_table_or_json(logged_in: Cli) -> None:
    out = logged_in("QueryBackupStorage", "name~=cli-none-%", "limit=10", "sort=-createDate")
    assert (out.returncode, out.stdout.strip()) == (0, "no results"), out.stderr
    out = logged_in("QueryBackupStorage", "name~=cli-none-%", "replyWithCount=true", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["inventories"] == [] and json.loads(out.stdout)["total"] == 0
    out = logged_in("QueryBackupStorage", "name~=cli-none-%", "count=true")
    assert (out.returncode, out.stdout.strip()) == (0, "0")


def test_a_bad_query_is_one_error_line_and_exit_1(logged_in: Cli) -> None:
    out = logged_in("QueryBackupStorage", "nosuch=1")
    assert_one_error_line(out, 1, "error SYS.1007: ")
    assert "nosuch" in out.stderr


def test_usage_errors_are_one_line_and_exit_2(logged_in: Cli) -> None:
    assert_one_error_line(logged_in("QueryBackupStorage", "limit=ten"), 2, "error: ")
    assert_one_error_line(logged_in("DeleteBackupStorage"), 2, "error: DeleteBackupStorage needs uuid")
    out = logged_in("QueryBackupStorag", "name=x")
    assert_one_error_line(out, 2, "error: unknown command or API 'QueryBackupStorag'")
    assert "did you mean QueryBackupStorage" in out.stderr


def test_deleting_an_unknown_uuid_succeeds(logged_in: Cli) -> None:
    out = logged_in("DeleteBackupStorage", f"uuid={uuid.uuid4().hex}")
    assert (out.returncode, out.stdout.strip()) == (0, "done"), out.stderr


def test_apis_lists_the_catalogue(cli: Cli) -> None:
    out = cli("apis", "--json")
    assert out.returncode == 0, out.stderr
    found = {a["name"]: a for a in json.loads(out.stdout)}
    assert found["AddCephBackupStorage"]["path"] == "/zstack/v1/backup-storage/ceph"
    assert "DeleteBackupStorage" in cli("apis", "backup").stdout


def test_an_api_help_shows_its_path_and_parameters(cli: Cli) -> None:
    out = cli("AddCephBackupStorage", "--help")
    assert out.returncode == 0, out.stderr
    assert "POST /zstack/v1/backup-storage/ceph" in out.stdout
    assert "monUrls *" in out.stdout and "[/?monPort=N]" in out.stdout


# ------------------------------------------------------------------ on the dev Ceph cluster


@pytest.mark.ceph
def test_add_query_and_delete_a_ceph_storage(logged_in: Cli, api: Api, c1: DevCluster, pool: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    out = logged_in("AddCephBackupStorage", f"name={name}", f"monUrls={c1.mon_url}", f"poolName={pool}")
    assert out.returncode == 0, out.stderr
    assert "Connected" in out.stdout and c1.env["SSH_PASSWORD"] not in out.stdout + out.stderr

    out = logged_in("QueryBackupStorage", f"name={name}")
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if name in line]
    assert "Ceph" in row and "Connected" in row and "GiB" in row

    out = logged_in("QueryCephBackupStorage", f"name={name}", "--json")
    [inv] = json.loads(out.stdout)["inventories"]
    assert inv["poolName"] == pool and c1.env["SSH_PASSWORD"] not in out.stdout

    assert logged_in("DeleteBackupStorage", f"uuid={inv['uuid']}").returncode == 0
    assert logged_in("QueryBackupStorage", f"name={name}", "count=true").stdout.strip() == "0"


@pytest.mark.ceph
def test_upload_image_sends_the_file_and_the_image_becomes_ready(
    logged_in: Cli, api: Api, c1: DevCluster, pool: str, tmp_path: Path
) -> None:
    name = f"cli-up-{uuid.uuid4().hex[:8]}"
    r = api.add_ceph(name, [c1.mon_url], poolName=pool)
    assert r.status_code == 200, r.text
    image = tmp_path / "tiny.raw"
    image.write_bytes(os.urandom(3 * 1024 * 1024))
    out = logged_in("upload-image", str(image), "--backup-storage", name, "--json")
    assert out.returncode == 0, out.stderr
    inv = json.loads(out.stdout)["inventory"]
    assert inv["status"] == "Ready" and inv["name"] == "tiny" and inv["format"] == "raw"


# ---------------------------------------------------------------- serve


def test_serve_becomes_the_server_process_itself(tmp_path: Path) -> None:
    """``imgstore serve`` execs ``python -m imgstore.server``: the process a supervisor
    started (its pid) is the server, and it carries none of the command line's modules."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSTORE_")}
    env.update(IMGSTORE_DATA_DIR=str(tmp_path), IMGSTORE_ADMIN_PASSWORD=ADMIN_PASSWORD)
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "imgstore.cli.commands", "serve", "--port", str(port),
                                 "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}{READY_PATH}") or proc.poll() is not None, 60)
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:5] == [b"-m", b"imgstore.server", b"--port", str(port).encode()], argv
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
