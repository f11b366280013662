"""Test fixtures: a private redis-server per test session (never the shared one).

``redis_url`` gives each test a clean keyspace on the session server;
``private_redis`` gives a test its own server it may kill and restart.

A test marked ``also_on_cluster`` runs twice: on the single server and on a
private 6-node Redis Cluster (started once per session, flushed before each
test). ``RQSUP_TEST_TOPOLOGY=cluster`` (or ``sentinel``) runs every test that
takes ``redis_url`` there instead: the long run in benchmarks/README.md;
``RQSUP_TEST_NO_CLUSTER=1`` runs the marked tests on the single server only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from rqsup.queue.connection import sync_client
from rqsup.redis_server import RedisServer
from rqsup.redis_topologies import LocalCluster, LocalSentinel
from tests.procs import queues, start  # noqa: F401  (fixtures for supervisor tests)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.cleanup()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "also_on_cluster: run on a Redis Cluster as well")
    config.addinivalue_line("markers", "single_only(why): not on the Cluster (says why)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if os.environ.get("RQSUP_TEST_NO_CLUSTER"):  # e.g. an old redis-py without Cluster support
        return
    if "redis_url" in metafunc.fixturenames and \
            metafunc.definition.get_closest_marker("also_on_cluster") and \
            not metafunc.definition.get_closest_marker("single_only"):
        metafunc.parametrize("topology", ["single", "cluster"], indirect=True)


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", None) or os.environ.get("RQSUP_TEST_TOPOLOGY", "single")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    with LocalSentinel(tmp_path_factory.mktemp("sentinel")) as setup:
        yield setup


def flush(url: str) -> None:
    """FLUSHALL on every primary (a Cluster client sends it to all of them)."""
    client = sync_client(url)
    client.flushall()
    client.close()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """The session Cluster, every primary flushed."""
    flush(redis_cluster.url)
    return redis_cluster.url


@pytest.fixture
def redis_url(topology: str, request: pytest.FixtureRequest) -> str:
    if topology == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    elif topology == "sentinel":
        url = request.getfixturevalue("redis_sentinel").url
    else:
        url = request.getfixturevalue("redis_server").url
    flush(url)
    return str(url)


@pytest.fixture
def private_redis(tmp_path: object) -> Iterator[RedisServer]:
    server = RedisServer(str(tmp_path) + "/redis", appendonly=True)
    server.start()
    yield server
    server.cleanup()
