"""``rqsup start CONFIG``: the supervisor process.

One asyncio loop runs the worker of every queue (dispatch, group-committed
writes, child pools), one lease renewer for all of them (one pipelined call
per interval), the stall sweepers, the scheduler loop, health (loop lag,
Redis, pools, the tree), the heartbeat and systemd notification; every one
of them under the supervision tree (:mod:`.tree`), which restarts what
crashes and gives back what it held. Signal handlers only record an
intent; this loop does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aredis

from rqsup.config.model import Config, QueueConfig, SandboxConfig, load_config
from rqsup.errors import ConfigError, InvalidOption
from rqsup.queue.connection import REDIS_ERRORS, async_client
from rqsup.queue.core import QueueCore
from rqsup.queue.drivers import AsyncDriver
from rqsup.queue.faults import Episode
from rqsup.sandbox import hygiene
from rqsup.sdnotify import Notifier
from rqsup.supervisor import maintenance, schedules
from rqsup.supervisor.child_output import ChildLimits
from rqsup.supervisor.health import LagMonitor, set_title, setup_logging
from rqsup.supervisor.identity import Identity, NameInUse
from rqsup.supervisor.orphans import OrphanReaper
from rqsup.supervisor.pool import SandboxSettings, forkserver_context
from rqsup.supervisor.status import StatusReporter
from rqsup.supervisor.tree import Supervised, Tree
from rqsup.supervisor.worker import SupervisorParts, Worker

log = logging.getLogger("rqsup.supervisor")
T = TypeVar("T")

#: While Redis is unreachable at start: a log line this often.
WAIT_LOG_EVERY_S = 5.0


class StopRequested(Exception):
    """A stop signal came while the supervisor was still starting."""


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
        cancel_grace_s=sb.cancel_grace_s,
        env=sb.env, limits=ChildLimits(
            max_result_bytes=sb.max_result_bytes, max_output_bytes=sb.max_output_bytes,
            max_output_line=sb.max_output_line_bytes, max_log_line=sb.max_log_line_bytes),
    )


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.notifier = Notifier.from_env()
        self.lag = LagMonitor()
        self.restart_counts: Counter[str] = Counter()
        self.tree = Tree(on_restart=self._restarted)
        #: The /metrics endpoint ([metrics] listen), or None.
        self.exporter: Any = None
        self.workers: dict[str, Worker] = {}
        self.worker_runs: dict[str, asyncio.Task[None]] = {}
        #: Workers of queues removed or changed by a reload, draining.
        self.retiring: dict[Worker, asyncio.Task[None]] = {}
        self.stop_requests = 0
        self.intent = asyncio.Event()
        self.reload_requested = False
        self.generation = 0
        self.private: Any = None
        self.client: aredis.Redis | None = None
        self.identity: Identity | None = None
        self.ctx: Any = None
        self.scheduler_loop: schedules.SchedulerLoop | None = None
        self.status = StatusReporter(self)
        self.on_renew_latency: Any = None

    def _restarted(self, e: Any) -> None:
        self.restart_counts.update([e.name])
        if self.exporter is not None:
            self.exporter.metrics.task_restarts.labels(e.name).inc()

    def _start_metrics(self, url: str) -> None:
        """The /metrics endpoint, before the queues start (they report into it)."""
        mc = self.config.metrics
        if mc.listen is None:
            return
        from rqsup.observe.server import Exporter

        exporter = Exporter(
            mc.listen, url=url, prefix=self.config.redis.prefix,
            queues=lambda: [q.name for q in self.config.queues],
            queue_gauges=mc.queue_gauges, redis_options=self._tls(),
            pools=lambda: [(n, w.pool) for n, w in self.workers.items() if w.pool is not None])
        try:
            exporter.start()
        except OSError as exc:
            # The queues matter more than their metrics: run on without them.
            log.error("[metrics] listen = %r: cannot listen there (%s); running without "
                      "/metrics", mc.listen, exc.strerror or exc)
            exporter.stop()
            return
        self.exporter = exporter
        m = self.exporter.metrics
        self.lag.on_sample = m.loop_lag.observe
        self.on_renew_latency = m.redis_latency.observe

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

    async def _pause(self, delay_s: float) -> None:
        """Sleep during start, ending at once (StopRequested) on a stop signal."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.intent.wait(), delay_s)
        if self.stop_requests:
            raise StopRequested

    # -- start ----------------------------------------------------------------------

    def _tls(self) -> dict[str, Any]:
        rc = self.config.redis
        return {"ssl_ca_certs": str(rc.ssl_ca_certs)} if rc.ssl_ca_certs else {}

    async def _probe(self, url: str) -> None:
        probe = async_client(url, retries=0, socket_connect_timeout=2, socket_timeout=2,
                             **self._tls())
        try:
            await probe.ping()
        finally:
            await probe.aclose()

    async def _redis_url(self) -> str:
        """The URL to use once Redis answers: waits while it does not (logging
        every few seconds, without READY=1), unless the config lets us start a
        private redis-server instead."""
        rc = self.config.redis
        episode = Episode(f"supervisor {self.config.supervisor.name}: waiting for Redis at "
                          f"{rc.redacted_url}", log, first_s=0.1, max_s=2.0,
                          remind_s=WAIT_LOG_EVERY_S)
        while True:
            try:
                await self._probe(rc.url)
                episode.ok()
                return rc.url
            except REDIS_ERRORS as exc:
                if rc.start_private:
                    return self._start_private()
                self.notifier.status(f"waiting for Redis at {rc.redacted_url}: {exc}")
                self.notifier.watchdog()  # alive, waiting: not wedged
                await self._pause(episode.note(exc))

    def _start_private(self) -> str:
        # On the configured local port when there is one, so producers using
        # the same config reach it; otherwise on a unix socket.
        from urllib.parse import urlparse

        from rqsup.redis_server import RedisServer

        rc = self.config.redis
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

    async def _retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run a start step, retrying while Redis fails (a stop signal ends it)."""
        episode = Episode(f"supervisor {self.config.supervisor.name}: {what}", log,
                          first_s=0.1, max_s=5.0)
        while True:
            try:
                result = await step()
                episode.ok()
                return result
            except REDIS_ERRORS as exc:
                await self._pause(episode.note(exc))

    def _make_worker(self, q: QueueConfig) -> Worker:
        s = self.config.supervisor
        assert self.client is not None and self.identity is not None
        parts = SupervisorParts(worker_id=f"{self.identity.worker_id}.{self.generation}",
                                forkserver=self.ctx, tree=self.tree)
        w = Worker.supervised(
            parts, q.name, q.processor, connection=self.client, prefix=self.config.redis.prefix,
            mode=q.mode, concurrency=q.concurrency, lease_s=s.lease_s,
            renew_interval_s=s.renew_interval_s, stall_interval_s=s.stall_interval_s,
            max_stalled_count=s.max_stalled_count, block_timeout_s=s.block_timeout_s,
            job_defaults=q.defaults, sandbox=sandbox_settings(q.sandbox),
            metrics=self.exporter.metrics if self.exporter is not None else None,
            wait_replicas=self.config.redis.wait_replicas,
        )
        if self.exporter is not None and w.pool is not None:
            restarts = self.exporter.metrics.child_restarts
            w.pool.on_retire = lambda reason, name=q.name: restarts.labels(name, reason).inc()
        return w

    async def _apply_limits(self, q: QueueConfig) -> None:
        """Queue-wide limits from the config (a queue without them in the config
        keeps whatever was set through the API), and its history time."""
        assert self.client is not None
        core = QueueCore(q.name, self.config.redis.prefix)
        await AsyncDriver(self.client).drive(core.op_set_history(self.config.metrics.history_s))
        if q.rate_limit_max is None and q.global_concurrency is None:
            return
        limits = await AsyncDriver(self.client).drive(core.op_limits(
            max_jobs=q.rate_limit_max, duration_s=q.rate_limit_duration_s,
            concurrency=q.global_concurrency))
        log.info("queue %s: queue-wide limits %s", q.name, limits)

    async def _start_queue(self, q: QueueConfig) -> None:
        await self._retrying(f"queue {q.name}: applying its limits",
                             lambda: self._apply_limits(q))
        try:
            w = self._make_worker(q)
        except InvalidOption as exc:
            log.error("queue %s: not started: %s (the other queues go on)", q.name, exc)
            return
        await w.prepare()
        self.workers[q.name] = w
        run = asyncio.create_task(w.run(), name=f"rqsup worker {q.name}")
        run.add_done_callback(self._worker_ended)
        self.worker_runs[q.name] = run

    @staticmethod
    def _worker_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s ended with an error", task.get_name(), exc_info=task.exception())

    async def _recover(self) -> None:
        """Requeue at once what our previous incarnations left active."""
        assert self.client is not None and self.identity is not None
        driver = AsyncDriver(self.client)
        for q in self.config.queues:
            core = QueueCore(q.name, self.config.redis.prefix)
            ids = await driver.execute(core.script(
                "requeue_incarnations", self.identity.worker_prefix, self.identity.worker_id))
            if ids:
                log.warning("queue %s: requeued %d job(s) left active by a previous run of "
                            "supervisor %s: %s", q.name, len(ids), self.config.supervisor.name,
                            [i.decode() if isinstance(i, bytes) else i for i in ids])

    async def _start(self) -> None:
        cfg = self.config
        url = await self._redis_url()
        self.client = async_client(url, retries=0, **self._tls())
        self._start_metrics(url)
        ttl = max(3 * cfg.supervisor.renew_interval_s, 5.0)
        self.identity = Identity(self.client, cfg.redis.prefix, cfg.supervisor.name, ttl)
        identity = self.identity
        await self._retrying("claiming its name", lambda: identity.claim(wait_s=2 * ttl + 1))
        await self._retrying("requeueing what a previous run left", self._recover)
        client = self.client
        self.scheduler_loop = await self._retrying("upserting schedulers",
                                                   lambda: schedules.start(client, cfg))
        preload = sorted({q.processor.partition(":")[0] for q in cfg.queues
                          if q.mode == "process"})
        self.ctx = forkserver_context(preload)
        await asyncio.gather(*(self._start_queue(q) for q in cfg.queues))

    def _start_timers(self) -> list[Supervised]:
        s = self.config.supervisor
        t = self.tree
        timers = [
            t.start("loop lag", self.lag.run),
            t.start("lease renewer", lambda: maintenance.renew_forever(
                self.all_workers, s.renew_interval_s, "lease renewer",
                on_latency=self.on_renew_latency)),
            t.start("heartbeat", self.status.heartbeat_loop),
            t.start("status", self.status.status_loop),
        ]
        if self.notifier.watchdog_interval_s is not None:
            timers.append(t.start("watchdog", self.status.watchdog_loop))
        if self.scheduler_loop is not None:
            timers.append(t.start("scheduler loop", self.scheduler_loop.run))
        keep = {self.private.proc.pid} if self.private is not None and self.private.proc else set()
        timers.append(t.start("orphan reaper", OrphanReaper(keep).run))
        return timers

    def all_workers(self) -> list[Worker]:
        """Every worker whose leases need renewing, draining ones included."""
        return [*self.workers.values(), *self.retiring]

    async def main(self) -> int:
        cfg = self.config
        name = cfg.supervisor.name
        if "@" in name:
            log.error("[supervisor].name must not contain '@', got %r", name)
            return 2
        set_title(f"rqsup: supervisor {name} starting")
        # A child of the same uid cannot read our memory (the Redis password);
        # what a killed child leaves behind is reparented to us, to be reaped.
        hygiene.not_dumpable()
        hygiene.make_subreaper()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        try:
            await self._start()
        except StopRequested:
            log.info("supervisor %s: stopped before it was ready", name)
            await self._shutdown(starting=True)
            await self._cleanup()
            return 0
        except (RuntimeError, NameInUse) as exc:
            log.error("supervisor %s cannot start: %s", name, exc)
            await self._shutdown(starting=True)
            await self._cleanup()
            return 1
        timers = self._start_timers()
        self.notifier.ready(self.status.text())
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
                await self.tree.stop(t)
            await self._cleanup()
        return 0

    # -- stop and reload --------------------------------------------------------

    async def _shutdown(self, *, starting: bool = False) -> None:
        grace = self.config.supervisor.shutdown_grace_s
        if not starting:
            self.notifier.stopping(f"stopping: draining for up to {grace:g}s")
            set_title(f"rqsup: supervisor {self.config.supervisor.name} stopping")
            log.info("stopping: no more claims; running jobs get up to %gs", grace)
        closing = [asyncio.create_task(w.close(grace)) for w in self.workers.values()]
        pending: set[asyncio.Task[Any]] = set(closing) | set(self.retiring.values())
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
                    for w in self.all_workers():
                        w.hurry()
        for run in self.worker_runs.values():
            with contextlib.suppress(Exception):
                await run
        if not starting:
            log.info("supervisor %s stopped", self.config.supervisor.name)

    async def _reload(self) -> None:
        self.notifier.reloading("reloading config")
        try:
            new = load_config(self.config.path)
        except (ConfigError, OSError) as exc:
            log.error("reload: the new config is invalid; keeping the running one: %s", exc)
            self.notifier.ready(self.status.text())
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
        try:
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
        except StopRequested:
            self.intent.set()  # the main loop sees the stop and shuts down
        for name in set(old) - {q.name for q in new.queues}:
            self._retire(name)
            log.info("reload: queue %s removed", name)
        self.notifier.ready(self.status.text())

    def _retire(self, name: str) -> None:
        """Close an old worker in the background; its jobs finish or go back."""
        w = self.workers.pop(name)
        run = self.worker_runs.pop(name)

        async def go() -> None:
            try:
                await w.close(self.config.supervisor.shutdown_grace_s)
                with contextlib.suppress(Exception):
                    await run
            finally:
                self.retiring.pop(w, None)

        self.retiring[w] = asyncio.create_task(go())

    async def _cleanup(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()
        if self.client is not None:
            if self.identity is not None:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.identity.release()
            with contextlib.suppress(Exception):
                await self.client.aclose()
        if self.private is not None:
            self.private.stop()


def run_supervisor(config: Config) -> int:
    setup_logging(config.supervisor.log_format, config.supervisor.log_level)
    return asyncio.run(Supervisor(config).main())
