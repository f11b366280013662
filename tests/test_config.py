"""The TOML config: the shipped files load, and every problem names the file and key."""

from __future__ import annotations

import os
import pwd
import textwrap
from pathlib import Path

import pytest

from rqsup.config import units
from rqsup.config.model import Config, load_config, redact_url
from rqsup.errors import ConfigError, InvalidOption

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
[supervisor]
name = "test"

[[queues]]
name = "q"
processor = "tests.fixtures.check_procs:sync_ok"
"""


def write(tmp_path: Path, text: str, name: str = "rqsup.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def only_problem(tmp_path: Path, text: str) -> str:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'rqsup.toml'}: "), problems[0]
    return problems[0]


# -- the shipped configs --------------------------------------------------------


def test_dev_config_loads_with_a_private_redis_under_var() -> None:
    cfg = load_config(REPO / "configs" / "dev.toml")
    assert cfg.redis.start_private is True
    assert cfg.redis.private_dir == REPO / "var" / "dev-redis"
    assert cfg.supervisor.name == "dev"
    assert [q.name for q in cfg.queues] == ["cpu", "flaky", "slow"]
    cpu, flaky, _slow = cfg.queues
    assert (cpu.mode, cpu.concurrency) == ("process", 2)
    assert flaky.defaults == {"attempts": 3, "backoff": {"type": "exponential", "delay": 0.2}}
    assert flaky.job_defaults.backoff == {"type": "exponential", "delay_ms": 200, "jitter": 0.0}


def test_prod_config_loads_and_sets_every_key() -> None:
    cfg = load_config(REPO / "configs" / "prod.toml")
    assert cfg.redis.start_private is False
    assert cfg.redis.url.startswith("rediss://")
    sup = cfg.supervisor
    assert (sup.shutdown_grace_s, sup.lease_s, sup.renew_interval_s) == (45.0, 30.0, 10.0)
    box = cfg.queues[0].sandbox
    assert (box.memory_soft_bytes, box.memory_hard_bytes) == (2**30, 2 * 2**30)
    assert box.rlimit_as_bytes == 4 * 2**30
    assert cfg.queues[0].defaults["timeout"] == 900.0
    assert cfg.queues[0].defaults["remove_on_fail"] == {"age": 14 * 86400.0, "count": 50000}
    # Every key the loader knows appears in prod.toml (set, or commented out).
    text = (REPO / "configs" / "prod.toml").read_text()
    from rqsup.config import model as config_mod

    keys = (
        *config_mod._SUPERVISOR_KEYS, *config_mod._QUEUE_KEYS, *config_mod._SANDBOX_KEYS,
        *config_mod.JOB_DEFAULT_KEYS, "url", "prefix", "ssl_ca_certs", "start_private",
        "private_dir",
    )
    missing = [k for k in keys if f"{k} = " not in text and f"[queues.{k}]" not in text]
    assert not missing


def test_defaults_apply_and_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + '\n[redis]\nprivate_dir = "data/redis"\n'))
    assert isinstance(cfg, Config)
    assert cfg.path == tmp_path / "rqsup.toml"
    assert cfg.redis.url == "redis://127.0.0.1:6379/0" and cfg.redis.prefix == "rqsup"
    assert cfg.redis.private_dir == tmp_path / "data" / "redis"
    sup = cfg.supervisor
    assert (sup.lease_s, sup.renew_interval_s, sup.stall_interval_s) == (30.0, 10.0, 15.0)
    assert (sup.log_format, sup.log_level, sup.max_stalled_count) == ("text", "info", 1)
    q = cfg.queues[0]
    assert (q.mode, q.concurrency, q.defaults) == ("process", 1, {})
    assert (q.processor_module, q.processor_attr) == ("tests.fixtures.check_procs", "sync_ok")
    assert q.sandbox.rlimit_core_bytes == 0 and q.sandbox.nice == 5


def test_renew_interval_defaults_to_a_third_of_the_lease(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "test"', 'name = "test"\nlease = "1m"')
    assert load_config(write(tmp_path, text)).supervisor.renew_interval_s == 20.0


# -- every kind of problem names the file and the key ----------------------------


def test_unknown_key_suggests_the_closest_known_key(tmp_path: Path) -> None:
    text = MINIMAL + "concurency = 4\n"
    assert only_problem(tmp_path, text).endswith(
        'queues[0].concurency: unknown key (did you mean "concurrency"?)'
    )


def test_a_unit_suffix_in_a_key_is_explained(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "test"', 'name = "test"\nlease_s = 30')
    assert 'supervisor.lease_s: unknown key (did you mean "lease"? units go in the value' in (
        only_problem(tmp_path, text)
    )


def test_bad_duration(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "test"', 'name = "test"\nshutdown_grace = "30 parsecs"')
    problem = only_problem(tmp_path, text)
    assert 'supervisor.shutdown_grace: must be a duration such as "250ms"' in problem
    assert problem.endswith(', got "30 parsecs"')


def test_bad_size_and_too_short_lease(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "test"', 'name = "test"\nlease = "500ms"') + (
        '[queues.sandbox]\nmemory_hard = "2 gallons"\n'
    )
    problems = problems_of(tmp_path, text)
    assert any('supervisor.lease: must be at least 1s, got "500ms"' in p for p in problems)
    assert any("queues[0].sandbox.memory_hard: unknown size unit 'gallons'" in p
               for p in problems)


def test_bad_mode(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, MINIMAL + 'mode = "fork"\n')
    assert problem.endswith(
        'queues[0].mode: must be one of "process", "thread", "async", got "fork"'
    )


def test_sandbox_on_a_thread_queue(tmp_path: Path) -> None:
    text = MINIMAL + 'mode = "thread"\n[queues.sandbox]\nnice = 10\n'
    assert 'queues[0].sandbox: only applies to mode = "process"; this queue has mode = ' \
           '"thread"' in only_problem(tmp_path, text)


def test_duplicate_queue_names(tmp_path: Path) -> None:
    text = MINIMAL + '[[queues]]\nname = "q"\nprocessor = "a.b:c"\n'
    assert only_problem(tmp_path, text).endswith(
        'queues[1].name: duplicate queue name "q" (also queues[0].name)'
    )


def test_memory_soft_above_hard(tmp_path: Path) -> None:
    text = MINIMAL + '[queues.sandbox]\nmemory_soft = "2GiB"\nmemory_hard = "1GiB"\n'
    assert only_problem(tmp_path, text).endswith(
        "queues[0].sandbox.memory_hard: must be greater than memory_soft (2GiB), got 1GiB"
    )


def test_bad_job_default_uses_the_producers_message(tmp_path: Path) -> None:
    text = MINIMAL + "[queues.defaults]\nattempts = 0\n"
    assert only_problem(tmp_path, text).endswith(
        "queues[0].defaults.attempts: attempts must be an int >= 1, got 0"
    )


def test_job_default_durations_and_add_time_options(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[queues.defaults]\ntimeout = "soon"\ndelay = "5s"\n'
        'backoff = { type = "exponential", delay = "1s", jiter = 0.5 }\n'
    )
    problems = problems_of(tmp_path, text)
    assert any('queues[0].defaults.timeout: timeout must be a duration' in p for p in problems)
    assert any("queues[0].defaults.delay: delay is chosen when a job is added" in p
               for p in problems)
    assert any("queues[0].defaults.backoff: backoff has unknown keys ['jiter']" in p
               for p in problems)


def test_missing_processor_and_bad_processor_syntax(tmp_path: Path) -> None:
    text = MINIMAL + '[[queues]]\nname = "r"\n[[queues]]\nname = "s"\nprocessor = "a.b.c"\n'
    problems = problems_of(tmp_path, text)
    assert len(problems) == 2
    assert problems[0].endswith("queues[1].processor: is required")
    assert problems[1].endswith(
        'queues[2].processor: must be "module:function", e.g. "myapp.jobs:send_email", '
        'got "a.b.c"'
    )


def test_concurrency_zero(tmp_path: Path) -> None:
    assert only_problem(tmp_path, MINIMAL + "concurrency = 0\n").endswith(
        "queues[0].concurrency: must be an integer from 1 to 10000, got 0"
    )


def test_every_problem_is_collected_into_one_error(tmp_path: Path) -> None:
    text = """
    [redis]
    url = "http://example.com"
    [supervisor]
    lease = "10s"
    renew_interval = "10s"
    log_format = "xml"
    [queues]
    name = "q"
    """
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert isinstance(err, InvalidOption)
    keys = [p.split(": ")[1] for p in err.problems]
    assert keys == ["redis.url", "supervisor.name", "supervisor.renew_interval",
                    "supervisor.log_format", "queues"]
    assert str(err).startswith("5 problems in the config:\n")
    assert "write [[queues]], not [queues]" in err.problems[-1]


def test_queue_and_supervisor_names_follow_the_key_rules(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "test"', 'name = "a b"').replace('name = "q"', 'name = "x:y"')
    problems = problems_of(tmp_path, text)
    assert problems[0].endswith("supervisor.name: supervisor name 'a b' must not contain ' '")
    assert problems[1].endswith("queues[0].name: queue name 'x:y' must not contain ':'")


def test_sandbox_user_must_exist(tmp_path: Path) -> None:
    text = MINIMAL + '[queues.sandbox]\nuser = "no-such-user-rqsup"\n'
    assert only_problem(tmp_path, text).endswith(
        'queues[0].sandbox.user: no user "no-such-user-rqsup" on this machine'
    )
    from rqsup.sandbox.hygiene import resolve_account

    me = pwd.getpwuid(os.geteuid())
    ok = load_config(write(tmp_path, MINIMAL + f'[queues.sandbox]\nuser = "{me.pw_name}"\n'))
    box = ok.queues[0].sandbox
    # The child's own resolution: a name, or a number (TOML int or string).
    assert resolve_account(box.user, box.group)[:2] == (me.pw_uid, me.pw_gid)
    for given in (str(me.pw_uid), me.pw_uid):
        num = load_config(write(tmp_path, MINIMAL + f"[queues.sandbox]\nuser = {given!r}\n"
                                .replace("'", '"')))
        box = num.queues[0].sandbox
        assert resolve_account(box.user, box.group) == (me.pw_uid, me.pw_gid, me.pw_name)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "[supervisor\n")
    assert "not valid TOML" in problem
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the file"):
        load_config(tmp_path / "nope.toml")


# -- secrets -------------------------------------------------------------------


def test_the_redis_password_never_shows(tmp_path: Path) -> None:
    text = MINIMAL + '[redis]\nurl = "redis://app:s3cret@db.example:6379/0"\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.redis.redacted_url == "redis://app:***@db.example:6379/0"
    assert "s3cret" not in repr(cfg) and "s3cret" not in repr(cfg.redis)
    bad = MINIMAL + '[redis]\nurl = "redis://app:s3cret@db.example:port/0"\n'
    problem = only_problem(tmp_path, bad)
    assert "redis.url: has a port that is not a number" in problem
    assert "s3cret" not in problem


def test_redact_url_forms() -> None:
    assert redact_url("rediss://:pw@h:6380/1") == "rediss://:***@h:6380/1"
    assert redact_url("redis://h/0?password=pw&db=1") == "redis://h/0?password=***&db=1"
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert redact_url("unix:///r.sock?password=pw") == "unix:///r.sock?password=***"


def test_tls_options(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not really a cert")
    ok = MINIMAL + '[redis]\nurl = "rediss://h:6380/0"\nssl_ca_certs = "ca.pem"\n'
    assert load_config(write(tmp_path, ok)).redis.ssl_ca_certs == ca
    plain = MINIMAL + '[redis]\nurl = "redis://h:6379/0"\nssl_ca_certs = "ca.pem"\n'
    assert only_problem(tmp_path, plain).endswith(
        "redis.ssl_ca_certs: only applies to TLS: use a rediss:// url (or tls = true)"
    )


# -- units -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
     ("1h30m", 5400.0), ("1.5s", 1.5), (12, 12.0), (0.5, 0.5), ("7", 7.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "1w", True, "nan", float("inf"), -3])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        units.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 * 2**20), ("1GiB", 2**30), ("100MB", 10**8), ("4096", 4096), (0, 0),
     ("1.5KiB", 1536), ("10 kb", 10_000), ("7B", 7)],
)
def test_sizes(text: object, size: int) -> None:
    assert units.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1M", "1.3B", "-5", -5, 1.5, False])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        units.parse_size(text)
