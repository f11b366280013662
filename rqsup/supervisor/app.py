"""``rqsup start CONFIG``: the supervisor process.

One asyncio loop runs the worker of every queue (dispatch, group-committed
writes, child pools), one lease renewer for all of them (one pipelined call
per interval), the stall sweepers, health (loop lag, Redis, pools), and
systemd notification. Signal handlers only record an intent; this loop
does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import redis.asyncio as aredis

from rqsup.config import Config, QueueConfig, SandboxConfig, load_config
from rqsup.errors import ConfigError, InvalidOption
from rqsup.queue.connection import CONNECTION_ERRORS, async_client
from rqsup.queue.core import QueueCore
from rqsup.queue.drivers import AsyncDriver
from rqsup.sdnotify import Notifier
from rqsup.supervisor import maintenance, schedules
from rqsup.supervisor.health import Identity, LagMonitor, setup_logging
from rqsup.supervisor.pool import SandboxSettings, forkserver_context
from rqsup.supervisor.worker import Worker

log = logging.getLogger("rqsup.supervisor")


def sandbox_settings(sb: SandboxConfig) -> SandboxSettings:
    rlimits = []
    if sb.rlimit_nofile is not None:
        rlimits.append(("RLIMIT_NOFILE", sb.rlimit_nofile))
    if sb.rlimit_core_bytes is not None:
        rlimits.append(("RLIMIT_CORE", sb.rlimit_core_bytes))
    if sb.rlimit_as_bytes is not None:
        rlimits.append(("RLIMIT_AS", sb.rlimit_as_bytes))
    return SandboxSettings(
        isolation=sb.isolation, memory_soft_bytes=sb.memory_soft_bytes,
        memory_hard_bytes=sb.memory_hard_bytes, max_jobs_per_child=sb.max_jobs_per_child,
        idle_timeout_s=sb.idle_timeout_s, boot_timeout_s=sb.boot_timeout_s, nice=sb.nice,
        user=sb.user, group=sb.group, rlimits=tuple(rlimits), kill_grace_s=sb.kill_grace_s,
    )


def _title(text: str) -> None:
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(text)


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.notifier = Notifier.from_env()
        self.lag = LagMonitor()
        self.workers: dict[str, Worker] = {}
        self.worker_tasks: dict[str, asyncio.Task[None]] = {}
        self.retiring: set[asyncio.Task[None]] = set()
        self.stop_requests = 0
        self.intent = asyncio.Event()
        self.reload_requested = False
        self.redis_ok_at = time.monotonic()
        self.generation = 0
        self.private: Any = None
        self.client: aredis.Redis | None = None
        self.ctx: Any = None
        self.scheduler_loop: schedules.SchedulerLoop | None = None

    # -- signals: record an intent, nothing more ----------------------------------

    def _on_stop_signal(self, signame: str) -> None:
        self.stop_requests += 1
        log.info("%s received (%s)", signame,
                 "graceful shutdown" if self.stop_requests == 1 else "quick shutdown")
        self.intent.set()

    def _on_hup(self) -> None:
        log.info("SIGHUP received: reloading the config")
        self.reload_requested = True
        self.intent.set()

    # -- start ----------------------------------------------------------------------

    async def _redis_url(self) -> str:
        rc = self.config.redis
        tls: dict[str, Any] = {"ssl_ca_certs": str(rc.ssl_ca_certs)} if rc.ssl_ca_certs else {}
        probe = aredis.Redis.from_url(rc.url, socket_connect_timeout=2, socket_timeout=2, **tls)
        try:
            await probe.ping()
            return rc.url
        except CONNECTION_ERRORS as exc:
            if not rc.start_private:
                raise RuntimeError(f"Redis at {rc.redacted_url} is unreachable: {exc}") from None
            # On the configured local port when there is one, so producers using
            # the same config reach it; otherwise on a unix socket.
            from urllib.parse import urlparse

            from rqsup.redis_server import RedisServer

            u = urlparse(rc.url)
            local = u.scheme == "redis" and u.hostname in ("127.0.0.1", "localhost") and u.port
            self.private = RedisServer(rc.private_dir, unix_socket=not local,
                                       port=u.port if local else None).start()
            url = str(self.private.url)
            if local and u.path not in ("", "/"):
                url += u.path  # keep the database number
            log.warning("Redis at %s is unreachable; started a private redis-server at %s "
                        "(data in %s); it stops when the supervisor exits", rc.redacted_url,
                        self.private.url, rc.private_dir)
            return url
        finally:
            await probe.aclose()

    def _make_worker(self, q: QueueConfig) -> Worker:
        s = self.config.supervisor
        assert self.client is not None
        return Worker(
            q.name, q.processor, connection=self.client, prefix=self.config.redis.prefix,
            mode=q.mode, concurrency=q.concurrency, lease_s=s.lease_s,
            renew_interval_s=s.renew_interval_s, stall_interval_s=s.stall_interval_s,
            max_stalled_count=s.max_stalled_count, block_timeout_s=s.block_timeout_s,
            job_defaults=q.defaults, sandbox=sandbox_settings(q.sandbox),
            worker_id=f"{self.identity.worker_id}.{self.generation}", forkserver=self.ctx,
            own_renewer=False,
        )

    async def _apply_limits(self, q: QueueConfig) -> None:
        """Queue-wide limits from the config (a queue without them in the config
        keeps whatever was set through the API)."""
        if q.rate_limit_max is None and q.global_concurrency is None:
            return
        assert self.client is not None
        core = QueueCore(q.name, self.config.redis.prefix)
        limits = await AsyncDriver(self.client).drive(core.op_limits(
            max_jobs=q.rate_limit_max, duration_s=q.rate_limit_duration_s,
            concurrency=q.global_concurrency))
        log.info("queue %s: queue-wide limits %s", q.name, limits)

    async def _start_queue(self, q: QueueConfig) -> None:
        await self._apply_limits(q)
        try:
            w = self._make_worker(q)
        except InvalidOption as exc:
            log.error("queue %s: not started: %s (the other queues go on)", q.name, exc)
            return
        await w.prepare()
        self.workers[q.name] = w
        self.worker_tasks[q.name] = asyncio.create_task(w.run(), name=f"rqsup worker {q.name}")

    async def _recover(self) -> None:
        """Requeue at once what our previous incarnations left active."""
        assert self.client is not None
        driver = AsyncDriver(self.client)
        for q in self.config.queues:
            core = QueueCore(q.name, self.config.redis.prefix)
            ids = await driver.execute(core.script(
                "requeue_incarnations", self.identity.worker_prefix, self.identity.worker_id))
            if ids:
                log.warning("queue %s: requeued %d job(s) left active by a previous run of "
                            "supervisor %s: %s", q.name, len(ids), self.config.supervisor.name,
                            [i.decode() if isinstance(i, bytes) else i for i in ids])

    async def main(self) -> int:
        cfg = self.config
        name = cfg.supervisor.name
        if "@" in name:
            log.error("[supervisor].name must not contain '@', got %r", name)
            return 2
        _title(f"rqsup: supervisor {name} starting")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        try:
            url = await self._redis_url()
            tls = {"ssl_ca_certs": str(cfg.redis.ssl_ca_certs)} if cfg.redis.ssl_ca_certs else {}
            self.client = async_client(url, **tls)
            ttl = max(3 * cfg.supervisor.renew_interval_s, 5.0)
            self.identity = Identity(self.client, cfg.redis.prefix, name, ttl)
            await self.identity.claim(wait_s=2 * ttl + 1)
            await self._recover()
            self.scheduler_loop = await schedules.start(self.client, cfg)
            preload = sorted({q.processor.partition(":")[0] for q in cfg.queues
                              if q.mode == "process"})
            self.ctx = forkserver_context(preload)
            await asyncio.gather(*(self._start_queue(q) for q in cfg.queues))
        except (RuntimeError, *CONNECTION_ERRORS) as exc:
            log.error("supervisor %s cannot start: %s", name, exc)
            await self._cleanup()
            return 1
        timers = [asyncio.create_task(c) for c in (
            self.lag.run(), self._renewer(), self._status_loop(), self._watchdog_loop(),
            self.scheduler_loop.run())]
        self.notifier.ready(self._status_text())
        log.info("supervisor %s ready: %d queue(s) %s", name, len(self.workers),
                 ", ".join(f"{w.queue_name} ({w.mode} x{w.concurrency})"
                           for w in self.workers.values()))
        try:
            while True:
                await self.intent.wait()
                self.intent.clear()
                if self.stop_requests:
                    break
                if self.reload_requested:
                    self.reload_requested = False
                    await self._reload()
            await self._shutdown()
        finally:
            for t in timers:
                t.cancel()
            await self._cleanup()
        return 0

    # -- stop and reload --------------------------------------------------------

    async def _shutdown(self) -> None:
        grace = self.config.supervisor.shutdown_grace_s
        self.notifier.stopping(f"stopping: draining for up to {grace:g}s")
        _title(f"rqsup: supervisor {self.config.supervisor.name} stopping")
        log.info("stopping: no more claims; running jobs get up to %gs", grace)
        closing = [asyncio.create_task(w.close(grace)) for w in self.workers.values()]
        pending: set[asyncio.Task[Any]] = set(closing) | set(self.retiring)
        while pending:
            stop = asyncio.create_task(self.intent.wait())
            _done, pending = await asyncio.wait(pending | {stop},
                                                return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stop)
            stop.cancel()
            if self.intent.is_set():
                self.intent.clear()
                if self.stop_requests > 1:
                    log.warning("quick shutdown: cutting running jobs short")
                    for w in self.workers.values():
                        w.hurry()
        await asyncio.gather(*self.worker_tasks.values(), return_exceptions=True)
        log.info("supervisor %s stopped", self.config.supervisor.name)

    async def _reload(self) -> None:
        self.notifier.reloading("reloading config")
        try:
            new = load_config(self.config.path)
        except (ConfigError, OSError) as exc:
            log.error("reload: the new config is invalid; keeping the running one: %s", exc)
            self.notifier.ready(self._status_text())
            return
        if new.redis != self.config.redis or new.supervisor != self.config.supervisor:
            log.warning("reload: [redis] and [supervisor] changes need a restart; "
                        "applying the [[queues]] and [[schedulers]] changes only")
        old = {q.name: q for q in self.config.queues}
        self.config = Config(path=self.config.path, redis=self.config.redis,
                             supervisor=self.config.supervisor, queues=new.queues,
                             schedulers=new.schedulers)
        if self.scheduler_loop is not None and self.client is not None:
            await schedules.reload(self.scheduler_loop, self.client, self.config)
        self.generation += 1
        for q in new.queues:
            w = self.workers.get(q.name)
            if q.name in old and old[q.name] == q and w is not None:
                if w.pool is not None:
                    w.pool.replace_all()  # same settings: fresh children, gracefully
                continue
            if w is not None:
                self._retire(q.name)
            await self._start_queue(q)
            log.info("reload: queue %s (re)started", q.name)
        for name in set(old) - {q.name for q in new.queues}:
            self._retire(name)
            log.info("reload: queue %s removed", name)
        self.notifier.ready(self._status_text())

    def _retire(self, name: str) -> None:
        """Close an old worker in the background; its jobs finish or go back."""
        w = self.workers.pop(name)
        task = self.worker_tasks.pop(name)

        async def go() -> None:
            await w.close(self.config.supervisor.shutdown_grace_s)
            await task

        t = asyncio.create_task(go())
        self.retiring.add(t)
        t.add_done_callback(self.retiring.discard)

    async def _cleanup(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.identity.release()
            with contextlib.suppress(Exception):
                await self.client.aclose()
        if self.private is not None:
            self.private.stop()

    # -- timers ----------------------------------------------------------------

    async def _renewer(self) -> None:
        s = self.config.supervisor
        while True:
            await asyncio.sleep(s.renew_interval_s)
            await maintenance.renew_all(list(self.workers.values()))
            try:
                await self.identity.heartbeat()
                self.redis_ok_at = time.monotonic()
            except CONNECTION_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _waiting(self) -> int | None:
        """Jobs ready to run across our queues (wait + prioritized); None if
        Redis did not answer."""
        if self.client is None or not self.workers:
            return 0
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for w in self.workers.values():
                    pipe.llen(w.core.keys.wait)
                    pipe.zcard(w.core.keys.prioritized)
                return sum(int(n) for n in await pipe.execute())
        except CONNECTION_ERRORS:
            return None

    def _status_text(self, waiting: int | None = None) -> str:
        running = sum(w.busy_count() for w in self.workers.values())
        failed = [w.queue_name for w in self.workers.values()
                  if w.pool is not None and w.pool.failed]
        text = f"{running} running"
        if waiting is not None:
            text += f", {waiting} waiting"
        text += f", loop lag p99 {self.lag.p99_ms():.1f} ms"
        if failed:
            text += f", processor failed: {', '.join(failed)}"
        return text

    async def _status_loop(self) -> None:
        """The process title every second; the status line every status interval."""
        s = self.config.supervisor
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(s.status_interval_s, 1.0))
            running = sum(w.busy_count() for w in self.workers.values())
            _title(f"rqsup: supervisor {s.name} ({running} running)")
            if time.monotonic() - last >= s.status_interval_s:
                last = time.monotonic()
                text = self._status_text(await self._waiting())
                self.notifier.status(text)
                log.info("status: %s", text)

    def healthy(self) -> bool:
        s = self.config.supervisor
        if self.lag.max_recent_s() > s.max_loop_lag_s:
            return False
        if time.monotonic() - self.redis_ok_at > max(3 * s.renew_interval_s, 10.0):
            return False
        pools = [w.pool for w in self.workers.values() if w.pool is not None]
        return not pools or any(p.failed is None for p in pools)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self.healthy():
                self.notifier.watchdog()
            else:
                log.warning("unhealthy (loop lag, Redis or pools): withholding WATCHDOG=1")


def run_supervisor(config: Config) -> int:
    setup_logging(config.supervisor.log_format, config.supervisor.log_level)
    return asyncio.run(Supervisor(config).main())
