"""The dashboard (issue 12, first part) against a real redis-server, through
Starlette's TestClient: login and roles, CSRF, read-only mode, the pages and
the JSON API, search, masking, bad input and a Redis outage. (The real-browser
tests are not built yet.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rqsup import Queue
from rqsup.dashboard import create_app
from rqsup.dashboard.auth import User, hash_password, verify_password

USERS = [User("vic", hash_password("v-pass"), "viewer"),
         User("ola", hash_password("o-pass"), "operator"),
         User("ada", hash_password("a-pass"), "admin")]


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(url=redis_url, users=USERS, secret="s" * 32,
                               mask={"mail": ["password"]})) as c:
        yield c


def login(c: TestClient, user: str, password: str) -> str:
    r = c.post("/login", data={"user": user, "password": password, "next": "/"},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return str(c.get("/api/session").json()["csrf"])


def failed_job(q: Queue) -> str:
    job = q.add("send", {"to": "ada@example.com", "password": "hunter2"}, attempts=1,
                remove_on_fail=False)
    reply = q._driver.execute(q.core.script("claim", 1, "w1", 30_000))
    token = reply[1][1].decode()
    q._driver.execute(q.core.script("fail", 1, job.id, token, "smtp said no", "SMTPError",
                                    "Traceback (most recent call last):\n  boom", -1, -1, -1,
                                    ""))
    return job.id


def test_passwords_are_scrypt_and_checked_in_constant_time() -> None:
    stored = hash_password("secret")
    assert stored.startswith("scrypt$") and "secret" not in stored
    assert verify_password("secret", stored) and not verify_password("Secret", stored)
    assert not verify_password("secret", "md5$abc")
    with pytest.raises(ValueError, match="role"):
        User("x", stored, "root")


def test_login_is_required_and_wrong_passwords_are_refused(client: TestClient,
                                                           redis_url: str) -> None:
    Queue("mail", redis_url).add("send", {"to": "x"})
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.get("/api/queues").status_code == 401
    r = client.post("/login", data={"user": "ada", "password": "nope"})
    assert r.status_code == 401 and "Wrong user or password" in r.text
    login(client, "vic", "v-pass")
    page = client.get("/")
    assert page.status_code == 200 and 'data-queue="mail"' in page.text
    [info] = client.get("/api/queues").json()
    assert info["name"] == "mail" and info["counts"]["wait"] == 1
    assert info["consumers"] == 0 and len(info["completed_per_minute"]) == 60


def test_roles_csrf_and_read_only_are_enforced_on_the_server(client: TestClient,
                                                             redis_url: str) -> None:
    q = Queue("mail", redis_url)
    job_id = failed_job(q)
    csrf = login(client, "vic", "v-pass")
    r = client.post(f"/api/queues/mail/jobs/{job_id}/retry", headers={"x-csrf-token": csrf})
    assert r.status_code == 403 and "needs the operator role" in r.json()["error"]
    csrf = login(client, "ola", "o-pass")
    r = client.post(f"/api/queues/mail/jobs/{job_id}/retry")
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = client.post(f"/api/queues/mail/jobs/{job_id}/retry", headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and q.get_job_state(job_id) == "wait"
    r = client.post("/api/queues/mail/obliterate", headers={"x-csrf-token": csrf})
    assert r.status_code == 403 and "admin" in r.json()["error"]
    r = client.post("/api/queues/mail/pause", headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and q.is_paused()
    with TestClient(create_app(url=redis_url, users=USERS, read_only=True,
                               secret="t" * 32)) as ro:
        csrf = login(ro, "ada", "a-pass")
        r = ro.post("/api/queues/mail/resume", headers={"x-csrf-token": csrf})
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert "<button>resume</button>" not in ro.get("/queues/mail").text
    assert q.is_paused()


def test_a_failed_job_page_shows_the_stack_and_masks_data(client: TestClient,
                                                          redis_url: str) -> None:
    job_id = failed_job(Queue("mail", redis_url))
    login(client, "ada", "a-pass")
    page = client.get(f"/queues/mail/jobs/{job_id}")
    assert page.status_code == 200
    assert "SMTPError: smtp said no" in page.text and "Traceback (most recent" in page.text
    assert "hunter2" not in page.text and "***" in page.text
    detail = client.get(f"/api/queues/mail/jobs/{job_id}").json()
    assert detail["state"] == "failed" and detail["data"]["password"] == "***"
    assert detail["stacktrace"].startswith("Traceback")


def test_search_by_a_word_in_the_data(client: TestClient, redis_url: str) -> None:
    q = Queue("mail", redis_url)
    for who in ("ada", "bob", "cyd"):
        q.add("send", {"to": f"{who}@example.com"})
    login(client, "vic", "v-pass")
    found = client.get("/api/queues/mail/jobs", params={"state": "wait", "q": "bob"}).json()
    assert [j["data"]["to"] for j in found["jobs"]] == ["bob@example.com"]
    assert found["scanned"] == 3
    page = client.get("/queues/mail", params={"state": "wait", "q": "cyd"})
    assert "cyd@example.com" in page.text and "ada@example.com" not in page.text


def test_bad_input_answers_404_and_shows_damaged_jobs(client: TestClient,
                                                      redis_url: str) -> None:
    q = Queue("mail", redis_url)
    job = q.add("send", {"to": "x"})
    q.client.hset(q.core.keys.job(job.id), "attempts_made", "lots")
    login(client, "vic", "v-pass")
    assert client.get("/queues/nope").status_code == 404
    assert client.get("/api/queues/nope/jobs").status_code == 404
    assert client.get("/api/queues/mail/jobs/999").status_code == 404
    assert client.get("/queues/mail/jobs/999").status_code == 404
    assert client.get("/api/queues/mail/jobs", params={"state": "nope"}).status_code == 400
    detail = client.get(f"/api/queues/mail/jobs/{job.id}").json()
    assert detail["problems"] and detail["data"] == {"to": "x"}


def test_a_redis_outage_shows_a_banner() -> None:
    with TestClient(create_app(url="redis://127.0.0.1:1/0", secret="u" * 32)) as c:
        page = c.get("/")
        assert page.status_code == 503 and "Redis is unreachable" in page.text
        assert 'http-equiv="refresh"' in page.text  # it comes back by itself
        assert c.get("/api/queues").status_code == 503


def test_rqsup_dashboard_serves_refuses_an_open_address_and_hashes(redis_url: str,
                                                                  tmp_path: Path) -> None:
    import socket
    import subprocess
    import urllib.request

    from click.testing import CliRunner

    from rqsup.cli import main
    from tests.helpers import wait_until

    rqsup_bin = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "rqsup")
    refused = subprocess.run([rqsup_bin, "dashboard", "--url", redis_url, "--listen",
                              "0.0.0.0:8999"], capture_output=True, text=True)
    assert refused.returncode == 2 and "without login" in refused.stderr
    out = CliRunner().invoke(main, ["dashboard", "hash-password"], input="pw\npw\n")
    stored = out.output.strip().splitlines()[-1]
    assert out.exit_code == 0 and verify_password("pw", stored)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[redis]\nurl = "{redis_url}"\n[supervisor]\nname = "s"\n'
                   '[[queues]]\nname = "mail"\nprocessor = "m:f"\n'
                   f'[dashboard]\nread_only = true\n[[dashboard.users]]\nname = "ada"\n'
                   f'password_hash = "{stored}"\nrole = "admin"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([rqsup_bin, "dashboard", "--config", str(cfg), "--listen",
                             f"0.0.0.0:{port}"], stderr=subprocess.DEVNULL)
    try:
        def login_page() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as r:
                    return r.status == 200 and b"Log in" in r.read()
            except OSError:
                return False

        wait_until(login_page, "the dashboard answering (with login, on 0.0.0.0)", 20)
    finally:
        proc.terminate()
        proc.wait(10)


def test_supervisors_page_shows_a_busy_child_and_schedulers_their_runs(
        client: TestClient, redis_url: str, tmp_path: Path, start: object,
        queues: object) -> None:
    from tests.helpers import wait_until
    from tests.procs import PROCS, config_text, uid, write

    name, qname = f"sup-{uid()}", f"dq-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:long_sleep"}]))
    start(cfg)  # type: ignore[operator]
    q = queues(qname)  # type: ignore[operator]
    job = q.add("sleepy", {"sleep": 30})
    q.upsert_scheduler("nightly", cron="0 3 * * *", template={"name": "report"})
    login(client, "vic", "v-pass")
    page = wait_until(lambda: (p := client.get("/supervisors")) and
                      f"job {job.id}" in p.text and p, "the busy child on the page", 20)
    assert f'data-name="{name}"' in page.text and 'data-state="busy"' in page.text
    [sup] = [s for s in client.get("/api/supervisors").json() if s["name"] == name]
    assert sup["host"] and sup["pid"] and sup["uptime_s"] is not None
    listed = client.get("/schedulers")
    assert "nightly" in listed.text and "0 3 * * *" in listed.text
    [sched] = [s for s in client.get("/api/schedulers").json() if s["id"] == "nightly"]
    assert sched["queue"] == qname and sched["next_run_ms"]
    runs = sched["next_runs_ms"]
    assert len(runs) == 3 and runs[1] - runs[0] == runs[2] - runs[1] == 86_400_000
    child = sup["queues"][0]["children"][0]
    assert child["rss"] > 1 << 20 and "cpu_s" in child
    assert "MiB" in client.get("/supervisors").text


def test_job_timeline_flow_priority_delay_clean_and_search_cursor(client: TestClient,
                                                                  redis_url: str) -> None:
    from rqsup import FlowProducer
    from rqsup.dashboard import data as data_mod

    q = Queue("mail", redis_url)
    job = q.add("send", {"to": "x"}, delay=60)
    csrf = login(client, "ola", "o-pass")
    h = {"x-csrf-token": csrf}
    assert client.post(f"/api/queues/mail/jobs/{job.id}/delay", data={"delay_s": "120"},
                       headers=h).status_code == 200
    assert client.post(f"/api/queues/mail/jobs/{job.id}/promote", headers=h).status_code == 200
    assert client.post(f"/api/queues/mail/jobs/{job.id}/priority", data={"priority": "3"},
                       headers=h).status_code == 200
    assert q.get_job_state(job.id) == "prioritized"
    bad = client.post(f"/api/queues/mail/jobs/{job.id}/priority", data={"priority": "x"},
                      headers=h)
    assert bad.status_code == 400
    detail = client.get(f"/api/queues/mail/jobs/{job.id}").json()
    assert [t["event"] for t in detail["timeline"]][:3] == ["added", "delayed", "waiting"]
    page = client.get(f"/queues/mail/jobs/{job.id}")
    assert 'id="timeline"' in page.text
    node = FlowProducer(redis_url).add({"name": "p", "queue": "mail",
                                        "children": [{"name": "c"}]})
    flow_page = client.get(f"/queues/mail/jobs/{node.id}")
    assert 'id="flow"' in flow_page.text and f"mail:{node.children[0].id}" in flow_page.text
    r = client.post("/api/queues/mail/clean", data={"state": "wait", "grace_s": "0"},
                    headers=h)
    assert r.status_code == 200 and r.json()["result"] >= 1
    # The search scans a bounded window and says where to go on from.
    for i in range(5):
        q.add("send", {"to": f"n{i}"})
    old_scan, data_mod.SEARCH_SCAN = data_mod.SEARCH_SCAN, 2
    try:
        first = client.get("/api/queues/mail/jobs", params={"state": "wait", "q": "n0"}).json()
        assert first["jobs"] == [] and first["next"] == 2
        later = client.get("/api/queues/mail/jobs",
                           params={"state": "wait", "q": "n0", "start": "4"}).json()
        assert [j["data"]["to"] for j in later["jobs"]] == ["n0"]
    finally:
        data_mod.SEARCH_SCAN = old_scan


def test_the_dashboard_mounts_under_a_path_of_another_app(redis_url: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    Queue("mail", redis_url).add("send", {"to": "x"})
    parent = Starlette(routes=[Mount("/ops", app=create_app(url=redis_url, users=USERS,
                                                            secret="m" * 32))])
    with TestClient(parent) as c:
        r = c.get("/ops/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ops/login?next=/"
        r = c.post("/ops/login", data={"user": "vic", "password": "v-pass", "next": "/"},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ops/"
        page = c.get("/ops/")
        assert 'href="/ops/queues/mail"' in page.text and "<svg" in page.text
        assert '"/ops/api/live"' in page.text
        assert c.get("/ops/api/queues").json()[0]["name"] == "mail"
