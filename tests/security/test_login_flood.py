"""Point 4 of the Trust issue: login cannot stall the server.

Eight clients guess passwords against a real server. Password hashing (scrypt, ~50 ms
of CPU) must not run on the event loop, so a cheap call keeps answering fast; failed
logins are throttled per source address and per account with growing delays, answered
as ID.1000 with 429 and ``Retry-After``; an unknown account costs what a known one does.
Sources other than 127.0.0.1 are other loopback addresses (127.0.0.0/8 all reach us).
"""
from __future__ import annotations

import hashlib
import re
import statistics
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, Server

# throttle windows of seconds and latency ratios: scripts/test.sh runs these alone, not beside
# the parallel lanes
pytestmark = pytest.mark.serial

LOGIN = "/zstack/v1/accounts/login"
UNLIMITED = {"IMGSTORE_LOGIN_FAILURES_PER_ADDRESS": "1000000/second",
             "IMGSTORE_LOGIN_FAILURES_PER_ACCOUNT": "1000000/second"}


def sha512(text: str) -> str:
    return hashlib.sha512(text.encode()).hexdigest()


def client(server: Server, source: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30,
                        transport=httpx.HTTPTransport(local_address=source))


def login(c: httpx.Client, account: str = "admin", password: str = "wrong") -> httpx.Response:
    return c.put(LOGIN, json={"logInByAccount": {"accountName": account, "password": sha512(password)}})


def cheap_latencies(c: httpx.Client, count: int = 40) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        r = c.get("/zstack/v1/accounts/sessions/0123456789abcdef0123456789abcdef/valid")
        out.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
        time.sleep(0.02)
    return out


def retry_after(r: httpx.Response) -> int:
    """The seconds a throttled login says to wait, checked in the header and the details."""
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "ID.1000", error
    seconds = int(r.headers["Retry-After"])
    assert seconds >= 1
    assert re.search(rf"\b{seconds} seconds?\b", error["details"]), error["details"]
    return seconds


def flood(server: Server, clients: int = 8) -> tuple[float, float, list[int]]:
    """Median latency of a cheap call idle and while ``clients`` threads guess passwords
    as fast as they are answered; and the statuses the guesses got."""
    with client(server) as c:
        login(c, password=ADMIN_PASSWORD)  # warm up
        idle = statistics.median(cheap_latencies(c))
        stop, answers = threading.Event(), []

        def guess() -> None:
            with client(server) as g:
                while not stop.is_set():
                    account = uuid.uuid4().hex[:8] if len(answers) % 2 else "admin"
                    answers.append(login(g, account=account).status_code)

        threads = [threading.Thread(target=guess) for _ in range(clients)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            busy = statistics.median(cheap_latencies(c))
        finally:
            stop.set()
            for t in threads:
                t.join()
    return idle, busy, answers


def test_a_password_guessing_flood_does_not_slow_other_calls(fresh_server: Server) -> None:
    fresh_server.env.update(UNLIMITED)  # every guess is hashed: the worst case for the loop
    idle, busy, answers = flood(fresh_server.start())
    assert len(answers) >= 8 and set(answers) == {401}, "the flood did run"
    assert busy < max(5 * idle, 0.05), f"median {busy * 1000:.1f} ms during the flood, {idle * 1000:.1f} ms idle"


def test_a_throttled_flood_is_slowed_down_and_cheap(fresh_server: Server) -> None:
    """With the default settings, guesses beyond the first few wait a second for their 429."""
    started = time.monotonic()
    idle, busy, answers = flood(fresh_server.start())
    seconds = time.monotonic() - started
    assert answers.count(401) <= 5 and answers.count(429) >= 8, answers
    assert len(answers) <= 5 + 8 * (seconds + 1), f"{len(answers)} answers in {seconds:.1f} s: not slowed"
    assert busy < max(5 * idle, 0.05), f"median {busy * 1000:.1f} ms during the flood, {idle * 1000:.1f} ms idle"


def test_failed_logins_from_one_address_are_throttled_with_growing_delays(fresh_server: Server) -> None:
    fresh_server.env.update({"IMGSTORE_LOGIN_FAILURES_PER_ADDRESS": "3 per 5 seconds; 6 per minute",
                             "IMGSTORE_LOGIN_FAILURES_PER_ACCOUNT": "1000/minute",
                             "IMGSTORE_LOGIN_THROTTLE_DELAY": "0"})
    server = fresh_server.start()
    with client(server, "127.0.0.2") as c:
        answers = [login(c).status_code for _ in range(3)]
        assert answers == [401, 401, 401]
        first = retry_after(login(c))
        assert first <= 5
        assert retry_after(login(c, password=ADMIN_PASSWORD)) <= 5, "even the right password waits"
        unknown = login(c, account="nobody-" + uuid.uuid4().hex[:6])
        assert retry_after(unknown) <= 5, "an unknown account gets the same answer"
        time.sleep(first + 0.2)
        answers = [login(c).status_code for _ in range(3)]
        assert answers == [401, 401, 401]
        second = retry_after(login(c))
        assert second > first, "the delay grows with the failures"
    with client(server, "127.0.0.3") as other:
        assert login(other, password=ADMIN_PASSWORD).status_code == 200, "another address is not held up"


def test_failed_logins_to_one_account_are_throttled_whatever_the_address(fresh_server: Server) -> None:
    fresh_server.env.update({"IMGSTORE_LOGIN_FAILURES_PER_ADDRESS": "1000/minute",
                             "IMGSTORE_LOGIN_FAILURES_PER_ACCOUNT": "4 per 20 seconds",
                             "IMGSTORE_LOGIN_THROTTLE_DELAY": "0"})
    server = fresh_server.start()
    codes = []
    for i in range(5):
        with client(server, f"127.0.1.{i + 1}") as c:
            codes.append(login(c).status_code)
    assert codes[:4] == [401] * 4 and codes[4] == 429
    with client(server, "127.0.1.99") as c:
        retry_after(login(c))


def test_an_unknown_account_answers_like_a_known_one(fresh_server: Server) -> None:
    fresh_server.env.update(UNLIMITED)
    server = fresh_server.start()
    with client(server) as c:
        login(c)

        def timed(account: str) -> tuple[float, httpx.Response]:
            started = time.perf_counter()
            r = login(c, account=account)
            return time.perf_counter() - started, r

        known = [timed("admin") for _ in range(6)]
        unknown = [timed(f"nobody-{i}") for i in range(6)]
    assert {r.status_code for _, r in known + unknown} == {401}
    assert {r.json()["error"]["details"] for _, r in known + unknown} == {"wrong account name or password"}
    k, u = statistics.median(t for t, _ in known), statistics.median(t for t, _ in unknown)
    assert u > 0.5 * k, f"unknown {u * 1000:.1f} ms vs known {k * 1000:.1f} ms: the hash is skipped"
