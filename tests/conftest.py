"""Test fixtures: a private redis-server per test session (never the shared one).

``redis_url`` gives each test a clean keyspace on the session server;
``private_redis`` gives a test its own server it may kill and restart.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from rqsup.redis_server import RedisServer
from tests.procs import queues, start  # noqa: F401  (fixtures for supervisor tests)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def private_redis(tmp_path: object) -> Iterator[RedisServer]:
    server = RedisServer(str(tmp_path) + "/redis", appendonly=True)
    server.start()
    yield server
    server.cleanup()
