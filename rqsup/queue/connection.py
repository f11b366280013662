"""Redis clients made by rqsup, with settings chosen for a job queue."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

DEFAULT_URL = "redis://localhost:6379/0"

#: One quick retry covers a pooled connection that went stale (Redis restart);
#: more would hide outages. Every write script is safe to repeat (fenced or
#: idempotent) except an auto-id add, which may then add a second job.
_RETRIES = 1
#: Blocking reads wait at most a few seconds, so this only catches dead peers.
SOCKET_TIMEOUT_S = 30.0


def sync_client(url: str | None) -> redis.Redis:
    return redis.Redis.from_url(
        url or DEFAULT_URL,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        health_check_interval=30,
    )


def async_client(url: str | None, **extra: Any) -> aredis.Redis:
    """``extra``: connection options such as ``ssl_ca_certs`` (TLS with a private CA)."""
    return aredis.Redis.from_url(
        url or DEFAULT_URL,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        health_check_interval=30,
        **extra,
    )


CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)


def reraise_if_cancelling() -> None:
    """redis-py may turn the cancellation of a blocked call into a connection
    error; a loop that catches connection errors must not swallow a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
