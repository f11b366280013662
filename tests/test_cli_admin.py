"""The admin commands against a real redis-server, through click's runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rqsup import Queue
from rqsup.cli import main
from rqsup.queue.connection import sync_client

pytestmark = pytest.mark.also_on_cluster  # and on a Redis Cluster (conftest.py)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_enqueue_jobs_status_and_actions(redis_url: str, tmp_path: Path) -> None:
    code, out = run("enqueue", "mail", "send", '{"to": "a"}', "--url", redis_url,
                    "--attempts", "2")
    assert code == 0 and out.strip() == "1"
    q = Queue("mail", redis_url)
    job = q.get_job("1")
    assert job is not None and job.data == {"to": "a"} and job.attempts == 2

    assert run("pause", "mail", "--url", redis_url)[0] == 0
    assert q.is_paused()
    code, out = run("status", "--queue", "mail", "--url", redis_url, "--json")
    info = json.loads(out)["queues"]["mail"]
    assert code == 0 and info["paused"] and info["counts"]["wait"] == 1
    assert run("resume", "mail", "--url", redis_url)[0] == 0 and not q.is_paused()

    # A config names Redis and the queues for status.
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[redis]\nurl = "{redis_url}"\n[supervisor]\nname = "s"\n'
                   '[[queues]]\nname = "mail"\nprocessor = "m:f"\n')
    code, out = run("status", "--config", str(cfg))
    assert code == 0 and "mail:" in out and "wait 1" in out

    q.add("later", None, delay=3600)
    code, out = run("promote", "mail", "--url", redis_url)
    assert code == 0 and out.strip() == "1" and q.counts()["delayed"] == 0

    code, out = run("jobs", "mail", "--state", "wait", "--url", redis_url, "--json")
    assert code == 0 and {j["name"] for j in json.loads(out)} == {"send", "later"}
    code, out = run("events", "mail", "--url", redis_url, "--count", "50")
    assert code == 0 and " added job 1 name=send" in out and " paused" in out
    q.close()


def test_failed_jobs_listed_retried_and_cleaned(redis_url: str) -> None:
    q = Queue("f", redis_url)
    job = q.add("x", 1)
    reply = q._driver.execute(q.core.script("claim", 1, "w", 30_000))
    token = reply[1][1].decode()
    q._driver.execute(q.core.script("fail", 1, job.id, token, "boom", "ValueError", "", -1,
                                    -1, -1, ""))
    code, out = run("jobs", "f", "--url", redis_url)
    assert code == 0 and "ValueError: boom" in out
    code, out = run("retry", "f", "--url", redis_url)
    assert code == 0 and out.strip() == "1" and job.state() == "wait"
    code, out = run("clean", "f", "--state", "wait", "--grace", "0s", "--url", redis_url)
    assert code == 0 and out.strip() == "1" and q.get_job(job.id) is None
    q.close()


def test_bad_input_gets_a_clear_error(redis_url: str) -> None:
    result = CliRunner().invoke(main, ["enqueue", "q", "x", "{not json", "--url", redis_url])
    assert result.exit_code == 2 and "DATA" in result.output and "not JSON" in result.output
    result = CliRunner().invoke(main, ["clean", "q", "--grace", "soon", "--url", redis_url])
    assert result.exit_code == 2 and "--grace" in result.output
    result = CliRunner().invoke(main, ["status", "--url", redis_url])
    assert result.exit_code == 2 and "--queue" in result.output
    result = CliRunner().invoke(main, ["jobs", "q", "--url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1 and "unreachable" in result.output
    result = CliRunner().invoke(main, ["enqueue", "bad{name", "x", "--url", redis_url])
    assert result.exit_code == 2 and "bad{name" in result.output


def test_admin_commands_show_what_they_can_of_damaged_jobs(redis_url: str) -> None:
    """A job with a broken field, a key of the wrong type and an id set aside:
    `jobs`, `status` and `events` show what could be read and say what is
    broken, with exit status 0 (no traceback, no empty --json)."""
    q = Queue("dmg", redis_url)
    r = sync_client(redis_url)
    good = q.add("fine", {"n": 1})
    bad = q.add("broken", {"n": 2})
    r.hset(q.core.keys.job(bad.id), mapping={"data": "{nope", "attempts_made": "x"})
    r.lpush(q.core.keys.wait, "ghost")
    r.set(q.core.keys.job("ghost"), "junk")
    code, out = run("jobs", "dmg", "--state", "wait", "--url", redis_url, "--json")
    assert code == 0
    listed = {j["id"]: j for j in json.loads(out)}
    assert listed[good.id]["data"] == {"n": 1} and "problems" not in listed[good.id]
    assert listed[bad.id]["name"] == "broken" and listed[bad.id]["data"] is None
    assert any("'data' is not valid JSON" in p for p in listed[bad.id]["problems"])
    assert any("'attempts_made' is not an integer" in p for p in listed[bad.id]["problems"])
    assert any("not a job hash" in p for p in listed["ghost"]["problems"])
    code, out = run("jobs", "dmg", "--state", "wait", "--url", redis_url)
    assert code == 0 and "BROKEN" in out and "fine" in out
    # A claim sets the wrong-type key aside: status counts it, jobs lists why.
    q._driver.execute(q.core.script("claim", 10, "w", 30000))
    code, out = run("status", "--queue", "dmg", "--url", redis_url, "--json")
    assert code == 0 and json.loads(out)["queues"]["dmg"]["malformed"] == 1
    code, out = run("status", "--queue", "dmg", "--url", redis_url)
    assert code == 0 and "malformed 1" in out
    code, out = run("jobs", "dmg", "--state", "malformed", "--url", redis_url, "--json")
    assert code == 0 and json.loads(out)[0]["id"] == "ghost"
    code, out = run("events", "dmg", "--url", redis_url, "--count", "50")
    assert code == 0 and " malformed job ghost " in out
    # A key of the wrong type where the events stream should be: one clear line.
    r.delete(q.core.keys.events)
    r.set(q.core.keys.events, "junk")
    result = CliRunner().invoke(main, ["events", "dmg", "--url", redis_url])
    assert result.exit_code == 1 and "WRONGTYPE" in result.output
    r.close()
    q.close()


def test_status_shows_each_childs_state_from_the_heartbeat(tmp_path: Path, redis_url: str,
                                                           start: Any) -> None:
    from tests.helpers import wait_until
    from tests.procs import PROCS, config_text, started_ids, uid, write

    name, qname = f"sup-{uid()}", f"kids-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:long_sleep", "concurrency": 2}],
        renew_interval="0.2s"))
    sup = start(cfg)
    startlog = tmp_path / "starts"
    q = Queue(qname, redis_url)
    job = q.add("nap", {"sleep": 30, "startlog": str(startlog)})
    wait_until(lambda: started_ids(startlog) == [job.id], "the job running")

    def busy() -> dict[str, Any] | None:
        _code, out = run("status", "--queue", qname, "--url", redis_url, "--json")
        sups = json.loads(out)["supervisors"]
        queues = sups[0].get("queues", []) if sups else []  # after the first heartbeat
        kids = queues[0]["children"] if queues else []
        return next((c for c in kids if c["state"] == "busy" and c["job"] == job.id), None)

    child = wait_until(busy, "a busy child in the heartbeat")
    assert child["pid"] > 0
    _code, out = run("status", "--queue", qname, "--url", redis_url)
    assert f"{qname} child #{child['slot']} pid {child['pid']} busy job {job.id}" in out
    assert " idle" in out
    sup.kill()
    q.close()
