"""``rqsup check`` and ``rqsup start`` as an operator runs them (the console script)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap
from pathlib import Path

import redis

from rqsup.redis_server import RedisServer, free_port
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
RQSUP = str(Path(sys.executable).parent / "rqsup")


def rqsup(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # The configs name the repository in processor_path, so the probe children
    # can import tests.fixtures (the working directory is never searched).
    return subprocess.run([RQSUP, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def config(tmp_path: Path, url: str, *processors: str, extra_redis: str = "") -> Path:
    """A config with one queue per ``processor[@mode]``, named q0, q1, ..."""
    queues = []
    for i, spec in enumerate(processors):
        processor, _, mode = spec.partition("@")
        queues.append(f'[[queues]]\nname = "q{i}"\nprocessor = "{processor}"\n'
                      f'mode = "{mode or "process"}"\n')
    text = (f'[redis]\nurl = "{url}"\n{extra_redis}\n[supervisor]\nname = "t"\n'
            f'processor_path = ["{REPO}"]\n\n' + "\n".join(queues))
    path = tmp_path / "check.toml"
    path.write_text(text)
    return path


OK_PROC = "tests.fixtures.check_procs:sync_ok"


def test_check_passes_on_good_processors_and_a_healthy_redis(
    tmp_path: Path, redis_url: str
) -> None:
    cfg = config(tmp_path, redis_url, OK_PROC, "tests.fixtures.check_procs:async_ok@async",
                 "rqsup.demo_processors:slow_report@thread")
    result = rqsup("check", str(cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok    config ")
    assert "ok    queue q0: processor tests.fixtures.check_procs:sync_ok (process, callable)" \
        in lines
    assert any(line.startswith("ok    queue q1:") and "coroutine function" in line
               for line in lines)
    assert any(line.startswith("ok    redis unix://") for line in lines)
    assert any(line.startswith("ok    redis maxmemory-policy: noeviction") for line in lines)
    assert any(line.startswith(("ok    redis version", "warn  redis version")) for line in lines)


def test_a_processor_that_fails_at_import_is_named_with_its_error(
    tmp_path: Path, redis_url: str
) -> None:
    cfg = config(tmp_path, redis_url, OK_PROC, "tests.fixtures.bad_import:process")
    result = rqsup("check", str(cfg))
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [
        "FAIL  queue q1: processor tests.fixtures.bad_import:process: import failed: "
        "ImportError: fixture: a dependency of this processor is not installed"
    ]


def test_missing_attribute_wrong_kind_and_missing_module(tmp_path: Path, redis_url: str) -> None:
    cfg = config(
        tmp_path, redis_url,
        "tests.fixtures.check_procs:nope",
        "tests.fixtures.check_procs:NOT_CALLABLE",
        "tests.fixtures.check_procs:sync_ok@async",
        "tests.fixtures.check_procs:async_ok@thread",
        "tests.fixtures.no_such_module:run",
    )
    result = rqsup("check", str(cfg))
    assert result.returncode == 1
    out = result.stdout
    assert "FAIL  queue q0: processor tests.fixtures.check_procs:nope: module " \
           "tests.fixtures.check_procs has no attribute 'nope'" in out
    assert "FAIL  queue q1: processor tests.fixtures.check_procs:NOT_CALLABLE: NOT_CALLABLE " \
           "is not callable (it is a int)" in out
    assert 'FAIL  queue q2: processor tests.fixtures.check_procs:sync_ok: mode "async" needs ' \
           "a coroutine function" in out
    assert 'FAIL  queue q3: processor tests.fixtures.check_procs:async_ok: mode "thread" ' \
           "needs a plain function" in out
    assert "FAIL  queue q4: processor tests.fixtures.no_such_module:run: import failed: " \
           "ModuleNotFoundError: No module named 'tests.fixtures.no_such_module'" in out


def test_unreachable_redis_fails_unless_start_may_run_a_private_one(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = rqsup("check", str(config(tmp_path, url, OK_PROC)))
    assert result.returncode == 1
    assert f"FAIL  redis {url}: unreachable:" in result.stdout

    private = config(tmp_path, url, OK_PROC, extra_redis="start_private = true")
    result = rqsup("check", str(private))
    assert result.returncode == 0, result.stdout
    assert "unreachable; start will run a private redis-server" in result.stdout


def test_an_evicting_redis_fails_the_check(tmp_path: Path, private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        result = rqsup("check", str(config(tmp_path, private_redis.url, OK_PROC)))
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
    assert result.returncode == 1
    assert "FAIL  redis maxmemory-policy: allkeys-lru: Redis may evict job keys" in result.stdout


def test_check_json_output(tmp_path: Path, redis_url: str) -> None:
    cfg = config(tmp_path, redis_url, OK_PROC, "tests.fixtures.bad_import:process")
    result = rqsup("check", "--json", str(cfg))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["queue q0"]["status"] == "ok"
    assert by_name["queue q1"]["status"] == "FAIL"
    assert "ImportError" in by_name["queue q1"]["detail"]


def test_a_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent("""
        [supervisor]
        name = "t"
        [[queues]]
        name = "q"
        processor = "a:b"
        concurrency = 0
    """))
    for command in ("check", "start"):
        result = rqsup(command, str(path))
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"{path}: queues[0].concurrency: must be an integer from 1 to 10000, got 0"
        )
    result = rqsup("check", "--json", str(path))
    assert result.returncode == 2
    assert json.loads(result.stdout)["problems"] == [
        f"{path}: queues[0].concurrency: must be an integer from 1 to 10000, got 0"
    ]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = rqsup("check", str(tmp_path / "missing.toml"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    assert rqsup("check").returncode == 2
    assert rqsup("frobnicate").returncode == 2
    assert rqsup("check", "--bogus", str(tmp_path)).returncode == 2


def test_dev_config_checks_without_any_setup() -> None:
    result = rqsup("check", "configs/dev.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "queue cpu: processor rqsup.demo_processors:count_primes" in result.stdout


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; "
                          "print('\\n'.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


def test_help_stays_light() -> None:
    mods = loaded_after("import rqsup.cli")
    assert not {"redis", "asyncio", "rqsup.config.model", "rqsup.cli.check"} & mods
    assert not {m for m in mods if m.startswith("rqsup.supervisor")}


def test_the_probe_child_loads_no_redis_or_asyncio() -> None:
    mods = loaded_after(
        "from rqsup.cli.check import probe; "
        "assert probe('rqsup.demo_processors:flaky', 'process')['ok']"
    )
    assert "redis" not in mods and "asyncio" not in mods


def test_dropping_children_to_another_user_needs_root() -> None:
    from rqsup.cli.check import FAIL, OK, check_sandbox_users
    from rqsup.config.model import QueueConfig, SandboxConfig

    me = QueueConfig("q", "a:b", sandbox=SandboxConfig(user=str(os.geteuid())))
    assert [r.status for r in check_sandbox_users((me,))] == [OK]
    other_uid = next(u.pw_uid for u in pwd.getpwall() if u.pw_uid != os.geteuid())
    other = QueueConfig("q", "a:b", sandbox=SandboxConfig(user=str(other_uid)))
    [result] = check_sandbox_users((other,))
    assert result.name == "queue q sandbox"
    assert result.status == (OK if os.geteuid() == 0 else FAIL)
    threads = QueueConfig("t", "a:b", mode="thread")
    assert check_sandbox_users((threads,)) == []


def test_processors_come_from_the_configured_path_never_the_working_directory(
    tmp_path: Path, redis_url: str
) -> None:
    """A psutil.py (or any module) in the working directory is not imported by
    rqsup itself; a processor module next to the config file is found (the
    config's folder is the default processor_path), after the installed
    packages."""
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "imported"
    (work / "psutil.py").write_text(f"open({str(marker)!r}, 'w').write('shadowed')\n")
    (work / "myjobs.py").write_text("def run(job):\n    return 1\n")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "nextdoor.py").write_text("def run(job):\n    return 2\n")
    cfg = conf / "c.toml"
    cfg.write_text(f'[redis]\nurl = "{redis_url}"\n[supervisor]\nname = "t"\n'
                   '[[queues]]\nname = "a"\nprocessor = "nextdoor:run"\n'
                   '[[queues]]\nname = "b"\nprocessor = "myjobs:run"\n')
    result = rqsup("check", str(cfg), cwd=work)
    assert not marker.exists(), "rqsup imported psutil.py from the working directory"
    assert "ok    queue a: processor nextdoor:run" in result.stdout, result.stdout
    assert "FAIL  queue b: processor myjobs:run: import failed: ModuleNotFoundError" in \
        result.stdout, result.stdout
    # And `rqsup start`, which imports psutil itself, from the same directory.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = tmp_path / "start.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([RQSUP, "start", str(cfg)], cwd=work, env=env,
                                stdout=err, stderr=err)
    try:
        wait_until(lambda: b" ready: " in log.read_bytes() or proc.poll() is not None,
                   "the supervisor ready", 30)
        assert b" ready: " in log.read_bytes(), log.read_text()
        assert not marker.exists(), "rqsup start imported psutil.py from the working directory"
    finally:
        proc.terminate()
        proc.wait(20)
