"""The child is untrusted (issue 9): hostile processors against a real
supervisor (``rqsup start``), real children and a real redis-server.

For each hostile behaviour: the job's final state and reason, nothing run in
the supervisor, no descendant left, and the supervisor healthy (a good queue
beside the hostile one keeps running). The uid drop is tested for real, as
root (CI runs as root), and a child of the same uid cannot read the
supervisor's memory (the supervisor then runs as ``nobody``).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil

from rqsup import Queue
from tests.helpers import wait_until
from tests.procs import REPO, RQSUP, alive, config_text, uid, write

H = "tests.fixtures.hostile_procs"


def ended(q: Queue, job: Any) -> bool:
    return job.state() in ("completed", "failed")


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def pids_in(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_hostile_children_cost_only_their_own_job(tmp_path: Path, redis_url: str,
                                                   start: Any, queues: Any) -> None:
    name, bad, good = f"sup-{uid()}", f"hostile-{uid()}", f"good-{uid()}"
    text = config_text(redis_url, name, [
        {"name": good, "processor": "tests.fixtures.supervisor_procs:work"},
        {"name": bad, "processor": f"{H}:run", "concurrency": 2},
    ])
    cfg = write(tmp_path / "s.toml",
                text + '\n[queues.sandbox]\nenv = { GIVEN_TO_CHILDREN = "yes" }\n')
    sup = start(cfg, env={"RQSUP_TEST_SECRET": "hunter2"})
    sup.wait_log(rf"supervisor {name} ready")
    q, gq = queues(bad), queues(good)
    marker, pidfile = tmp_path / "pwned", tmp_path / "daemons"

    def add(proc: str, **data: Any) -> Any:
        return q.add(proc, {"proc": proc, "marker": str(marker), "pidfile": str(pidfile),
                            **data}, attempts=1, timeout=data.pop("timeout", None) or 20)

    jobs = {
        "crafted_pickle": add("crafted_pickle"),
        "garbage_then_result": add("garbage_then_result"),
        "huge_frame": add("huge_frame"),
        "daemonize_and_return": add("daemonize_and_return"),
        "daemonize_and_crash": add("daemonize_and_crash"),
        "daemonize_and_spin": add("daemonize_and_spin", timeout=1.0),
        "print_forever": add("print_forever", lines=20_000),
        "huge_result": add("huge_result", bytes=32 << 20),
        "big_result": add("huge_result", bytes=8 << 20),
        "raises_bad_str": add("raises_bad_str"),
        "print_env": add("print_env"),
    }
    fine = [gq.add("w", {"n": i}) for i in range(20)]
    wait_until(lambda: all(ended(q, j) for j in jobs.values()), "every hostile job ended", 90)
    for j in jobs.values():
        j.refresh()

    def failed(key: str, etype: str, text: str) -> None:
        j = jobs[key]
        assert j.state() == "failed", (key, j.return_value)
        assert j.error_type == etype and text in (j.failed_reason or ""), (
            key, j.error_type, j.failed_reason)

    # Nothing a child sends runs in the supervisor: no pickle is ever loaded.
    failed("crafted_pickle", "ChildProtocolError", "protocol error: the child sent a frame")
    assert not marker.exists()
    failed("garbage_then_result", "ChildProtocolError", "protocol error")
    failed("huge_frame", "ChildProtocolError", "over the cap")
    assert jobs["daemonize_and_return"].return_value == "daemon left behind"
    failed("daemonize_and_crash", "ChildCrashed", "child exited with code 7")
    failed("daemonize_and_spin", "JobTimedOut", "timed out after 1s")
    assert jobs["print_forever"].return_value == "printed"
    failed("huge_result", "ResultTooLarge", "over the cap of 16777216 (max_result)")
    assert len(jobs["big_result"].return_value) == 8 << 20
    failed("raises_bad_str", "BadStr", "<BadStr whose str() raised RuntimeError>")
    env = jobs["print_env"].return_value
    assert "RQSUP_TEST_SECRET" not in env["environ"] and "RQSUP_TEST_SECRET" not in env["initial"]
    assert "GIVEN_TO_CHILDREN" in env["environ"] and "PATH" in env["environ"]
    # Every daemon is gone: killed with its job, or reaped as an orphan.
    daemons = pids_in(pidfile)
    assert len(daemons) == 3, daemons
    wait_until(lambda: all(dead(p) for p in daemons), "every daemonized grandchild killed", 10)
    # The supervisor's log holds at most the capped output of the noisy job.
    log = sup.log()
    noisy = jobs["print_forever"].id
    lines = len(re.findall(rf"child {bad}#\d job {noisy}: x", log))
    assert 0 < lines <= (1 << 20) // 1001 + 1, lines
    assert re.search(rf"job {noisy}: \d+ bytes of output dropped", log)
    # Healthy all along: the good queue ran, no task crashed, nothing else left.
    wait_until(lambda: all(j.state() == "completed" for j in fine), "the good jobs", 30)
    assert "crashed (" not in log and "Traceback" not in log.split("killing it")[0][-10_000:]
    sup.check_running("after the hostile jobs")
    late = add("print_env")
    wait_until(lambda: ended(q, late), "a job after the hostile ones", 30)
    assert late.state() == "completed"
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(20) == 0
    wait_until(lambda: not [p for p in sup.seen.values() if alive(p)], "no process left", 10)


def test_a_child_cannot_read_the_supervisors_memory(tmp_path: Path, redis_url: str) -> None:
    """Given a supervisor and a child of the same uid, without CAP_SYS_PTRACE
    (root with that one capability taken away stands for any ordinary user,
    which never has it), the child cannot read the supervisor's memory, where
    the Redis password is: the supervisor is not dumpable. The control: the
    same child reads a dumpable process of the same uid and capabilities."""
    assert os.geteuid() == 0, "this test drops CAP_SYS_PTRACE with setpriv: run it as root"
    no_ptrace = ["setpriv", "--bounding-set=-sys_ptrace"]
    control = subprocess.Popen([*no_ptrace, "sleep", "60"])
    qname = f"mem-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, f"sup-{uid()}", [{"name": qname, "processor": f"{H}:read_supervisor_memory"}]))
    log = tmp_path / "sup.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*no_ptrace, RQSUP, "start", str(cfg)], cwd=REPO,
                                stdout=err, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_until(lambda: b" ready: " in log.read_bytes() or proc.poll() is not None,
                   "the supervisor ready", 30)
        assert b" ready: " in log.read_bytes(), log.read_text()
        q = Queue(qname, redis_url)
        assert q.add("peek", {"pid": control.pid}, attempts=1).wait(20) == {"read": 64}
        assert q.add("peek", {"pid": proc.pid}, attempts=1).wait(20) == {
            "denied": "PermissionError"}
        q.close()
    finally:
        proc.terminate()
        proc.wait(20)
        control.kill()
        control.wait()


def test_a_dropped_child_runs_as_its_user_and_imports_its_processor(
        tmp_path: Path, redis_url: str, start: Any, queues: Any) -> None:
    """user = "nobody" (a name), user = "65534" (a number), group = "nogroup"
    alone: groups, gid and uid are dropped in that order, and the child can
    import code after the drop."""
    assert os.geteuid() == 0, "this test drops children to nobody: run it as root (CI does)"
    nobody = pwd.getpwnam("nobody")
    cases = {"by-name": ('user = "nobody"', (nobody.pw_uid, nobody.pw_gid, [nobody.pw_gid])),
             "by-id": (f'user = "{nobody.pw_uid}"', (nobody.pw_uid, nobody.pw_gid,
                                                       [nobody.pw_gid])),
             "group-only": ('group = "nogroup"', (0, nobody.pw_gid, [nobody.pw_gid]))}
    names = {case: f"drop-{case}-{uid()}" for case in cases}
    qs = [{"name": names[c], "processor": f"{H}:whoami"} for c in cases]
    text = config_text(redis_url, f"sup-{uid()}", qs)
    for case, (line, _want) in cases.items():
        text = text.replace(f'name = "{names[case]}"\nprocessor = "{H}:whoami"\n',
                            f'name = "{names[case]}"\nprocessor = "{H}:whoami"\n'
                            f"[queues.sandbox]\n{line}\n")
    sup = start(write(tmp_path / "s.toml", text))
    for case, (_line, (want_uid, want_gid, want_groups)) in cases.items():
        job = queues(names[case]).add("who", {}, attempts=1)
        got = job.wait(30)
        assert (got["uid"], got["gid"], got["groups"]) == (want_uid, want_gid, want_groups), \
            (case, got)
        assert got["late"] == "imported as the dropped user"
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(20) == 0
