"""Redis URLs for a single server, a Cluster and Sentinel: parsing, config keys, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rqsup.config.model import load_config, redact_url
from rqsup.errors import ConfigError
from rqsup.queue.endpoints import EndpointError, from_parts, parse


def test_cluster_url_gives_the_seed_nodes_and_credentials() -> None:
    ep = parse("rediss+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001/0")
    assert ep.kind == "cluster" and ep.tls
    assert ep.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert ep.username == "app" and ep.password == "s@cret"


def test_sentinel_url_gives_master_db_and_sentinel_auth() -> None:
    ep = parse("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/3?sentinel_password=spw")
    assert ep.kind == "sentinel" and not ep.tls
    assert ep.nodes == (("s1", 26379), ("s2", 26380))
    assert (ep.master, ep.db, ep.password, ep.username) == ("mymaster", 3, "pw", None)
    assert ep.sentinel_auth == {"password": "spw"}
    assert parse("redis+sentinel://s1:1/m").db == 0


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://", "at least one host:port"),
    ("redis+cluster://h:7000/2", "only database 0"),
    ("redis+cluster://h", "must be host:port"),
    ("redis+cluster://h:99999", "port that is not a number"),
    ("redis+cluster://h:1?x=1", "unknown option"),
    ("redis+sentinel://s:1", "names the primary"),
    ("redis+sentinel://s:1/m/x", "database must be a number"),
    ("redis+sentinel://s:1/m/0?passwd=1", "unknown option"),
    ("http://h:1", "must start with redis://"),
])
def test_bad_urls_say_which_part_is_wrong(url: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        parse(url)


def test_secrets_of_every_kind_are_redacted() -> None:
    shown = redact_url("redis+sentinel://u:pw@s:1,t:2/m/0?sentinel_password=spw")
    assert "pw" not in shown.replace("password", "") and "***" in shown


def _config(tmp_path: Path, redis_table: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f"""
[redis]
{redis_table}
[supervisor]
name = "s"
[[queues]]
name = "q"
processor = "rqsup.demo_processors:flaky"
""")
    return path


def test_config_cluster_nodes_and_sentinels_become_urls(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, 'cluster_nodes = ["a:7000", "b:7001"]\ntls = true'))
    assert cfg.redis.url == "rediss+cluster://a:7000,b:7001"
    cfg = load_config(_config(tmp_path, 'sentinels = ["s:1"]\nmaster = "m"\ndb = 2\n'
                                        "wait_replicas = 1"))
    assert cfg.redis.url == "redis+sentinel://s:1/m/2" and cfg.redis.wait_replicas == 1
    assert parse(from_parts("sentinel", ["s:1"], master="m")).master == "m"


@pytest.mark.parametrize(("table", "message"), [
    ('sentinels = ["s:1"]', "redis.master: is required"),
    ('master = "m"', "redis.master: only applies with sentinels"),
    ('cluster_nodes = ["a:1"]\ndb = 1', "redis.db: a Redis Cluster has only database 0"),
    ('cluster_nodes = ["a"]', "redis.cluster_nodes: "),
    ('cluster_nodes = []', 'redis.cluster_nodes: must be a non-empty list'),
    ('url = "redis://h:1"\nsentinels = ["s:1"]\nmaster = "m"', "give one of url"),
    ('url = "redis+cluster://h:1/5"', "redis.url: a Redis Cluster has only database 0"),
    ("wait_replicas = -1", "redis.wait_replicas: must be an integer from 0 to 16"),
    ("tls = true", "redis.tls: only applies with cluster_nodes or sentinels"),
])
def test_config_mistakes_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, table))
    assert message in str(err.value)
