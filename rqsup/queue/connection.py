"""Redis clients made by rqsup, with settings chosen for a job queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from rqsup.queue import endpoints
from rqsup.queue.endpoints import Endpoint

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


def _options(ep: Endpoint, retry: Any, extra: dict[str, Any],
             url_has_auth: bool = False) -> dict[str, Any]:
    """rqsup's defaults, the URL's credentials, then the caller's ``extra``."""
    base = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": 5.0, "retry": retry}
    return {**base, **({} if url_has_auth else _auth(ep)), **extra}


def _auth(ep: Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ep.username:
        out["username"] = ep.username
    if ep.password is not None:
        out["password"] = ep.password
    if ep.tls:
        out["ssl"] = True
    return out


def _sentinel_kwargs(ep: Endpoint, extra: dict[str, Any]) -> dict[str, Any]:
    """Sentinels answer quickly or not at all; they share the TLS settings."""
    kw: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, **ep.sentinel_auth}
    if ep.tls:
        kw["ssl"] = True
        kw.update({k: v for k, v in extra.items() if k.startswith("ssl_")})
    return kw


#: The oldest redis-py whose Cluster clients rqsup supports (older ones race
#: when a client is shared by threads, and have no asyncio Cluster pub/sub).
CLUSTER_MIN_REDIS_PY = (6, 0)


def _check_cluster_support() -> None:
    have = tuple(int(p) for p in redis.__version__.split(".")[:2] if p.isdigit())
    if have < CLUSTER_MIN_REDIS_PY:
        raise endpoints.EndpointError(
            f"a redis+cluster:// URL needs redis-py {'.'.join(map(str, CLUSTER_MIN_REDIS_PY))} "
            f"or newer; this is redis-py {redis.__version__} (pip install -U redis)")


def sync_client(url: str | None, **extra: Any) -> redis.Redis:
    """``extra``: connection options such as ``ssl_ca_certs``. A Cluster or
    Sentinel URL gives a client of that kind (it answers every call rqsup
    makes as :class:`redis.Redis` does, so it is typed as one)."""
    url = url or DEFAULT_URL
    ep = endpoints.parse(url)
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES)
    if ep.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        _check_cluster_support()
        seeds = [ClusterNode(h, p) for h, p in ep.nodes]  # type: ignore[no-untyped-call]
        cluster = RedisCluster(startup_nodes=seeds, **_options(ep, retry, extra))
        cluster._rqsup_url = url  # type: ignore[attr-defined]
        return cast(redis.Redis, cluster)
    if ep.kind == "sentinel":
        from redis.sentinel import Sentinel

        assert ep.master is not None
        s = Sentinel(list(ep.nodes),  # type: ignore[no-untyped-call]
                     sentinel_kwargs=_sentinel_kwargs(ep, extra))
        client = s.master_for(ep.master, db=ep.db,  # type: ignore[no-untyped-call]
                              health_check_interval=30, **_options(ep, retry, extra))
        client._rqsup_url = url
        return cast(redis.Redis, client)
    return redis.Redis.from_url(url, health_check_interval=30,
                                **_options(ep, retry, extra, url_has_auth=True))


def async_client(url: str | None, *, retries: int = _RETRIES, **extra: Any) -> aredis.Redis:
    """``extra``: connection options such as ``ssl_ca_certs`` (TLS with a private CA).

    ``retries=0`` for a worker: a claim whose reply was lost must not be
    re-sent behind its back (it would claim a second batch); the worker
    resends itself and gives back what a lost reply may have claimed.
    A Cluster client still follows MOVED and ASK redirects (the command did
    not run there) whatever ``retries`` says."""
    url = url or DEFAULT_URL
    ep = endpoints.parse(url)
    retry = AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries)
    client: aredis.Redis
    if ep.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        _check_cluster_support()
        cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in ep.nodes],
                               **_options(ep, retry, extra))
        cluster._rqsup_url = url  # type: ignore[attr-defined]
        cluster._rqsup_retries = retries  # type: ignore[attr-defined]
        return cast(aredis.Redis, cluster)
    if ep.kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        assert ep.master is not None
        s = Sentinel(list(ep.nodes),  # type: ignore[no-untyped-call]
                     sentinel_kwargs=_sentinel_kwargs(ep, extra))
        client = s.master_for(ep.master, db=ep.db, health_check_interval=30,
                              **_options(ep, retry, extra))
    else:
        client = aredis.Redis.from_url(url, health_check_interval=30,
                                       **_options(ep, retry, extra, url_has_auth=True))
    client._rqsup_url = url  # type: ignore[attr-defined]
    client._rqsup_retries = retries  # type: ignore[attr-defined]
    _fast_packing(client)
    return client


_CLUSTER_TYPES: tuple[type, ...] | None = None


def is_cluster(client: Any) -> bool:
    """A redis-py Cluster client (sync or asyncio); the drivers ask on every
    call, so the classes are looked up once."""
    global _CLUSTER_TYPES
    if _CLUSTER_TYPES is None:
        from redis.asyncio.cluster import RedisCluster as AsyncCluster
        from redis.cluster import RedisCluster

        _CLUSTER_TYPES = (RedisCluster, AsyncCluster)
    return isinstance(client, _CLUSTER_TYPES)


def client_key(client: Any) -> int:
    """What identifies a client's connections, for sharing per-client state
    (sibling clients on one pool share it)."""
    return id(getattr(client, "connection_pool", client))


def never_resends(client: Any) -> bool:
    """The client's retry policy is no retries (see :func:`async_client`)."""
    retry = getattr(client, "retry", None) if is_cluster(client) else client.get_retry()
    if retry is None:
        return False
    count = getattr(retry, "get_retries", None)  # redis-py >= 6; 5.x keeps it private
    return (count() if count is not None else getattr(retry, "_retries", None)) == 0


def without_retries(client: aredis.Redis) -> aredis.Redis:
    """A client to the same server as ``client`` (same address, credentials and
    TLS settings), with a pool of its own whose connections never re-send a
    command (see :func:`async_client`)."""
    url = getattr(client, "_rqsup_url", None)
    if is_cluster(client) or (url is not None and endpoints.parse(url).kind != "single"):
        if getattr(client, "_rqsup_retries", None) == 0:
            return client
        if url is None:
            raise ValueError("a worker on Redis Cluster needs a client made by rqsup "
                             "(rqsup.queue.connection.async_client) or a URL")
        return async_client(url, retries=0)
    from redis.asyncio.sentinel import SentinelConnectionPool

    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        raise ValueError("a worker on Sentinel needs a client made by rqsup "
                         "(rqsup.queue.connection.async_client) or a URL")
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


async def xread_many(client: aredis.Redis, streams: dict[Any, Any], *, count: int,
                     block: int) -> list[Any]:
    """XREAD over several streams. On a Cluster one XREAD can only name keys
    of one slot, so each slot gets its own blocking read, all in flight at
    once; the replies are joined (a slot with nothing new costs the block)."""
    if not is_cluster(client) or len(streams) < 2:
        return list(await client.xread(streams, count=count, block=block) or [])
    from redis.crc import key_slot

    by_slot: dict[int, dict[Any, Any]] = {}
    for key, pos in streams.items():
        raw = key.encode() if isinstance(key, str) else key
        by_slot.setdefault(key_slot(raw), {})[key] = pos
    replies = await asyncio.gather(*(client.xread(part, count=count, block=block)
                                     for part in by_slot.values()))
    return [entry for reply in replies for entry in (reply or [])]


CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)
#: Everything a Redis call can raise (see rqsup.queue.faults for what each means).
REDIS_ERRORS = (redis.RedisError, ConnectionError, OSError)


def reraise_if_cancelling() -> None:
    """redis-py may turn the cancellation of a blocked call into a connection
    error; a loop that catches connection errors must not swallow a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
