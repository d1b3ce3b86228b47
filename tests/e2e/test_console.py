"""The operator console at ``/``, driven in headless Debian Chromium through Playwright.

Playwright's own browser downloads are never used: the tests launch ``/usr/bin/chromium``
(Debian's ``chromium``, installed by scripts/setup.sh) and are skipped when it is absent.
Screenshots land in /tmp (``imgstore-console-*.png``) for a person to look at.
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, Api, DevCluster, Server, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path("/tmp")
SESSION_KEY = "imgstore.session"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium; scripts/setup.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server: Server):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(f"{server.url}/")
    yield page
    context.close()


def sign_in(page, password: str = ADMIN_PASSWORD) -> None:  # type: ignore[no-untyped-def]
    page.fill("#account", "admin")
    page.fill("#password", password)
    page.click("#signin-submit")


def session_of(page) -> str | None:  # type: ignore[no-untyped-def]
    return page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')")


def storage_row(page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#storages tbody tr[data-name="{name}"]')


# ---------------------------------------------------------------- served without a session


def test_the_page_and_its_files_are_served_without_a_session(server: Server) -> None:
    index = httpx.get(f"{server.url}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["content-security-policy"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{server.url}/web/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
    assert httpx.get(f"{server.url}/web/../app.py").status_code == 404
    assert httpx.get(f"{server.url}/web/index.py").status_code == 404


def test_the_page_loads_nothing_from_other_hosts() -> None:
    web = Path(__file__).resolve().parents[2] / "imgstore" / "web"
    for f in web.iterdir():
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", f.read_text()), f"{f.name} loads from another host"


def test_api_data_never_reaches_inner_html() -> None:
    app_js = (Path(__file__).resolve().parents[2] / "imgstore" / "web" / "app.js").read_text()
    assert not re.search(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write", app_js)


# ---------------------------------------------------------------- sign in


def test_a_wrong_password_shows_an_error_and_keeps_no_session(page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    sign_in(page, password="not-the-password")
    error = page.locator("#signin-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("ID.1000")
    assert session_of(page) is None
    expect(page.locator("#console")).to_be_hidden()
    page.screenshot(path=str(SCREENSHOTS / "imgstore-console-wrong-password.png"))


def test_sign_in_then_sign_out_closes_the_session(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    sign_in(page)
    expect(page.locator("#console")).to_be_visible()
    uuid_ = session_of(page)
    assert uuid_
    assert httpx.get(f"{server.url}/zstack/v1/accounts/sessions/{uuid_}/valid").json() == {"valid": True}

    page.reload()  # the session survives a reload (sessionStorage)
    expect(page.locator("#console")).to_be_visible()

    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    assert session_of(page) is None
    # the form shows at once and the DELETE follows it (app.js signOut): under load the
    # check could run before the server had it (CI, 2026-12-04); the session must close soon
    wait_for(lambda: httpx.get(f"{server.url}/zstack/v1/accounts/sessions/{uuid_}/valid").json() == {"valid": False},
             10, every=0.1)


def test_a_session_closed_elsewhere_sends_the_page_back_to_sign_in(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    sign_in(page)
    expect(page.locator("#console")).to_be_visible()
    httpx.delete(f"{server.url}/zstack/v1/accounts/sessions/{session_of(page)}")
    expect(page.locator("#signin")).to_be_visible(timeout=15_000)  # at the next auto-refresh
    expect(page.locator("#signin-note")).to_contain_text("sign in again")
    assert session_of(page) is None


def test_the_fallback_sha512_matches_hashlib(page) -> None:  # type: ignore[no-untyped-def]
    """Over plain http on a LAN address the page has no crypto.subtle and hashes by itself."""
    for text in ("", "abc", ADMIN_PASSWORD, "p@ss:wörd✓" * 20):
        got = page.evaluate("t => sha512Fallback(new TextEncoder().encode(t))", text)
        assert got == hashlib.sha512(text.encode()).hexdigest()


# ---------------------------------------------------------------- rendering, against canned replies
# The browser's requests to these paths are answered by the test (Playwright routes), so
# the page is checked against the ZStack contract whatever the server implements yet.

GiB = 1 << 30
EVIL_NAME = "<img src=x onerror=\"window.pwned=1\">"


def ceph_inventory(uuid_: str, name: str, *, status: str = "Connected", total: int = 100 * GiB,
                   available: int = 60 * GiB, **extra: object) -> dict:
    return {"uuid": uuid_, "name": name, "type": "Ceph", "state": "Enabled", "status": status,
            "totalCapacity": total, "availableCapacity": available, "url": "not used",
            "mons": [{"monUuid": uuid_[::-1], "hostname": f"mon-{name[:3]}.lab", "monPort": 6789,
                      "status": status, "sshUsername": "root", "sshPort": 22}],
            "fsid": "6e2b-fsid", "poolName": "imgs", "poolReplicatedSize": 3, **extra}


class CannedApi:
    """Answers the page's storage and image calls as ZStack's contract says, and records them."""

    def __init__(self, storages: list[dict]) -> None:
        self.storages = storages
        self.images: dict[str, dict] = {}
        self.added: list[dict] = []
        self.uploads: list[dict] = []

    def install(self, page) -> None:  # type: ignore[no-untyped-def]
        page.route(re.compile(r"/zstack/v1/(backup-storage|images|api-jobs)|/upload-target/"), self.handle)

    def handle(self, route) -> None:  # type: ignore[no-untyped-def]
        req = route.request
        path = req.url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
        if path == "zstack/v1/backup-storage":
            return route.fulfill(json={"inventories": self.storages})
        if path == "zstack/v1/images" and req.method == "GET":
            return route.fulfill(json={"inventories": list(self.images.values())})
        if path == "zstack/v1/images" and req.method == "POST":
            params = req.post_data_json["params"]
            self.added.append({"body": req.post_data_json, "prefer": req.headers.get("prefer")})
            uuid_ = params["resourceUuid"]
            self.images[uuid_] = {
                "uuid": uuid_, "name": params["name"], "status": "Downloading", "format": params["format"],
                "url": params["url"], "size": 0, "backupStorageRefs": [{
                    "backupStorageUuid": params["backupStorageUuids"][0], "status": "Downloading",
                    "installPath": f"ceph://imgs/{uuid_}", "uploadUrl": f"/upload-target/{uuid_}"}]}
            # a host the browser cannot reach: the page must poll on its own origin
            return route.fulfill(status=202, json={"location": f"http://mn.invalid:8080/zstack/v1/api-jobs/{uuid_}"})
        if path.startswith("zstack/v1/api-jobs/"):
            return route.fulfill(json={"inventory": self.images[path.rsplit("/", 1)[1]]})
        if path.startswith("upload-target/") and req.method == "PUT":
            uuid_ = path.rsplit("/", 1)[1]
            # Playwright does not hand a File body to a route: the size comes from the header,
            # and the bytes themselves are checked by the dev-cluster upload test
            self.uploads.append(dict(req.headers))
            image = self.images[uuid_]
            image.update(status="Ready", size=int(req.headers["x-image-size"]))
            image["backupStorageRefs"][0]["status"] = "Ready"
            return route.fulfill(json={})
        if path.startswith("zstack/v1/images/"):
            image = self.images.get(path.rsplit("/", 1)[1])
            return route.fulfill(json={"inventories": [image] if image else []})
        return route.continue_()


def test_a_full_or_disconnected_storage_stands_out_and_api_text_stays_text(page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    CannedApi([
        ceph_inventory("a" * 32, "full-one", available=3 * GiB),
        ceph_inventory("b" * 32, EVIL_NAME, status="Disconnected",
                       statusReason="mon[mon-<im.lab]: ssh connect timed out after 5 s"),
        ceph_inventory("c" * 32, "roomy"),
    ]).install(page)
    sign_in(page)

    expect(page.locator("#summary")).to_contain_text("3 image storages")
    expect(page.locator("#summary")).to_contain_text("1 down")
    expect(page.locator("#summary")).to_contain_text("1 nearly full")
    full = storage_row(page, "full-one")
    expect(full.locator(".bar")).to_have_class(re.compile(r"\bfull\b"))
    expect(full.locator("td.capacity")).to_contain_text("97.0 GiB of 100.0 GiB used (97%)")
    expect(storage_row(page, "roomy").locator(".bar")).to_have_class(re.compile(r"\bok\b"))

    down = page.locator('#storages tbody tr[data-uuid="' + "b" * 32 + '"]')
    expect(down).to_have_class(re.compile(r"\bdown\b"))
    expect(down.locator("td.name")).to_contain_text(EVIL_NAME)  # shown as text, not markup
    expect(down.locator("td.status")).to_contain_text("ssh connect timed out")
    expect(down.locator("td.mons")).to_contain_text("Disconnected")
    assert page.evaluate("window.pwned") is None
    assert page.locator("#storages img").count() == 0
    # the images list is empty, not an error, while the server has no image API
    page.screenshot(path=str(SCREENSHOTS / "imgstore-console-at-a-glance.png"), full_page=True)


def test_an_upload_follows_zstacks_add_image_contract(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    canned = CannedApi([ceph_inventory("d" * 32, "bs-one")])
    canned.install(page)
    image = tmp_path / "disk.qcow2"
    image.write_bytes(b"QFI\xfb" + os.urandom((2 << 20) - 4))
    sign_in(page)
    expect(page.locator("#img-bs")).to_have_value("d" * 32)

    page.set_input_files("#img-file", str(image))
    expect(page.locator("#img-name")).to_have_value("disk")
    expect(page.locator("#img-format")).to_have_value("qcow2")  # from the file's magic
    page.click("#img-submit")

    upload = page.locator("#uploads li").first
    expect(upload).to_have_attribute("data-state", "ready")
    expect(upload).to_contain_text("Ready · 2.00 MiB")
    [added] = canned.added
    params = added["body"]["params"]
    assert params["url"] == "upload://" and params["format"] == "qcow2" and params["name"] == "disk"
    assert params["backupStorageUuids"] == ["d" * 32] and re.fullmatch(r"[0-9a-f]{32}", params["resourceUuid"])
    assert added["prefer"] == "respond-async"
    [headers] = canned.uploads
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-image-uuid"] == params["resourceUuid"] and headers["x-image-size"] == str(2 << 20)
    assert headers["authorization"] == f"OAuth {session_of(page)}"
    row = page.locator('#images tbody tr[data-name="disk"]')
    expect(row).to_contain_text("Ready")
    expect(row).to_contain_text("bs-one")
    page.screenshot(path=str(SCREENSHOTS / "imgstore-console-upload-contract.png"), full_page=True)


def test_the_upload_url_is_read_where_the_contract_puts_it(page) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"backupStorageRefs": [{"installPath": "ceph://p/i", "uploadUrl": "/up/1"}]}, "/up/1"),
        ({"uploadUrl": "http://h/up/2", "backupStorageRefs": [{"uploadUrl": "/up/x"}]}, "http://h/up/2"),
        ({"backupStorageRefs": [{"imageUploadUrl": "http://h/up/3"}]}, "http://h/up/3"),
        ({"backupStorageRefs": [{"installPath": "http://h/up/4"}]}, "http://h/up/4"),
        ({"url": "https://h/up/5", "backupStorageRefs": [{"installPath": "ceph://p/i"}]}, "https://h/up/5"),
        ({"url": "upload://", "backupStorageRefs": [{"installPath": "ceph://p/i"}]}, None),
    ]
    for inventory, expected in cases:
        assert page.evaluate("i => uploadUrl(i)", inventory) == expected, inventory


# ---------------------------------------------------------------- storages and images on the dev cluster


def add_storage_through_the_form(page, name: str, mon_url: str, pool: str) -> None:  # type: ignore[no-untyped-def]
    page.click("#add-storage-toggle")
    page.fill("#bs-name", name)
    page.fill("#bs-mons", mon_url)
    page.fill("#bs-pool", pool)
    page.fill("#bs-description", "added from the console test")
    page.click("#bs-submit")


@pytest.mark.ceph
def test_an_operator_adds_a_ceph_storage_and_sees_it_connected_with_its_capacity(
    page, c1: DevCluster, pool: str, api: Api  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    sign_in(page)
    name = f"console-{uuid.uuid4().hex[:6]}"
    add_storage_through_the_form(page, name, c1.mon_url, pool)

    expect(page.locator("#bs-progress")).to_contain_text(f"Added {name}", timeout=90_000)
    expect(page.locator("#bs-error")).to_be_hidden()
    assert page.input_value("#bs-mons") == "", "the mon URLs (with their SSH password) stay in the page"

    row = storage_row(page, name)
    expect(row.locator("td.status")).to_have_text("Connected")
    expect(row.locator("td.capacity")).to_contain_text(re.compile(r"[\d.]+ [KMGT]iB of [\d.]+ [KMGT]iB used"))
    expect(row.locator("td.mons")).to_contain_text("Connected")
    expect(row.locator("td.ceph")).to_contain_text(c1.fsid)
    expect(row.locator("td.ceph")).to_contain_text(pool)
    expect(row).not_to_contain_text(c1.env["SSH_PASSWORD"])

    [inv] = api.storages(q=f"name={name}")
    assert inv["status"] == "Connected" and inv["totalCapacity"] > 0
    page.screenshot(path=str(SCREENSHOTS / "imgstore-console-storage.png"), full_page=True)


@pytest.mark.ceph
def test_a_refused_storage_shows_the_servers_error_in_the_page(
    page, c1: DevCluster, pool: str, api: Api  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    sign_in(page)
    wrong = c1.mon_url_with(password="wrong-password")
    add_storage_through_the_form(page, f"console-bad-{uuid.uuid4().hex[:6]}", wrong, pool)

    error = page.locator("#bs-error")
    expect(error).to_be_visible(timeout=90_000)
    expect(error).to_contain_text(re.compile(r"[A-Z]+\.\d{4}"))  # a ZStack error code
    expect(error).not_to_contain_text("wrong-password")
    assert api.storages() == []
    page.screenshot(path=str(SCREENSHOTS / "imgstore-console-refused.png"), full_page=True)


@pytest.mark.ceph
def test_an_operator_uploads_an_image_and_sees_it_ready(
    page, c1: DevCluster, pool: str, api: Api, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    name = f"console-img-{uuid.uuid4().hex[:6]}"
    added = api.add_ceph(name, [c1.mon_url], poolName=pool)
    assert added.status_code == 200, added.text
    bs_uuid = added.json()["inventory"]["uuid"]
    stem = f"tiny-{os.urandom(3).hex()}"  # the session's server may hold other tests' images
    image = tmp_path / f"{stem}.raw"
    image.write_bytes(os.urandom(3 << 20))

    sign_in(page)
    expect(storage_row(page, name).locator("td.status")).to_have_text("Connected")
    page.set_input_files("#img-file", str(image))
    expect(page.locator("#img-name")).to_have_value(stem)
    page.select_option("#img-bs", value=bs_uuid)
    page.click("#img-submit")

    upload = page.locator("#uploads li").first
    expect(upload).to_have_attribute("data-state", re.compile("ready|error"), timeout=120_000)
    page.screenshot(path=str(SCREENSHOTS / "imgstore-console-upload.png"), full_page=True)
    assert upload.get_attribute("data-state") == "ready", upload.inner_text()
    row = page.locator(f'#images tbody tr[data-name="{stem}"]')
    expect(row).to_contain_text("Ready")
    expect(row).to_contain_text("3.00 MiB")
    expect(row).to_contain_text(name)
