"""Redis clients made by rqsup, with settings chosen for a job queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

try:
    from hiredis import pack_command as _hiredis_pack_command

    _pack: Callable[[tuple[Any, ...]], bytes] | None = _hiredis_pack_command
except ImportError:  # hiredis is a dependency; an old one may lack pack_command
    _pack = None

DEFAULT_URL = "redis://localhost:6379/0"

#: One quick retry covers a pooled connection that went stale (Redis restart);
#: more would hide outages. Every write script is safe to repeat (fenced or
#: idempotent) except an auto-id add, which may then add a second job.
_RETRIES = 1
#: Blocking reads wait at most a few seconds, so this only catches dead peers.
SOCKET_TIMEOUT_S = 30.0


def sync_client(url: str | None, **extra: Any) -> redis.Redis:
    """``extra``: connection options such as ``ssl_ca_certs``."""
    return redis.Redis.from_url(
        url or DEFAULT_URL,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
        health_check_interval=30,
        **extra,
    )


def async_client(url: str | None, *, retries: int = _RETRIES, **extra: Any) -> aredis.Redis:
    """``extra``: connection options such as ``ssl_ca_certs`` (TLS with a private CA).

    ``retries=0`` for a worker: a claim whose reply was lost must not be
    re-sent behind its back (it would claim a second batch); the worker
    resends itself and gives back what a lost reply may have claimed."""
    client = aredis.Redis.from_url(
        url or DEFAULT_URL,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        health_check_interval=30,
        **extra,
    )
    _fast_packing(client)
    return client


def without_retries(client: aredis.Redis) -> aredis.Redis:
    """A client to the same server as ``client`` (same address, credentials and
    TLS settings), with a pool of its own whose connections never re-send a
    command (see :func:`async_client`)."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 0)
    own = aredis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    sibling = aredis.Redis.from_pool(own)  # closes its pool when closed
    _fast_packing(sibling)
    return sibling


def _hiredis_pack(self: Any, *args: Any) -> list[bytes]:
    if isinstance(args[0], str):  # "CONFIG GET": the words go separately
        args = tuple(args[0].encode().split()) + args[1:]
    assert _pack is not None
    return [_pack(args)]


def _fast_packing(client: aredis.Redis) -> None:
    """redis-py's asyncio connections pack commands in pure Python (about
    20 µs for a script call with 30 arguments, a fifth of a worker's time per
    call under load); its sync ones already use hiredis. Give the pool's
    connection class hiredis packing when hiredis has it."""
    if _pack is None:
        return
    pool = client.connection_pool
    base = pool.connection_class
    if getattr(base, "_rqsup_fast", False):
        return
    pool.connection_class = type(
        f"Fast{base.__name__}", (base,), {"pack_command": _hiredis_pack, "_rqsup_fast": True}
    )


CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)
#: Everything a Redis call can raise (see rqsup.queue.faults for what each means).
REDIS_ERRORS = (redis.RedisError, ConnectionError, OSError)


def reraise_if_cancelling() -> None:
    """redis-py may turn the cancellation of a blocked call into a connection
    error; a loop that catches connection errors must not swallow a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
