"""The ``/metrics`` endpoint: a supervisor's (``[metrics] listen``) or
``rqsup metrics``'s (the queues' gauges only, one scrape target for all).

prometheus-client's own HTTP server, in a thread: a scrape never waits for
the supervisor's event loop, and the loop never waits for a scrape (the
queue gauges are read with a sync client of the exporter's own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from rqsup.config.units import parse_listen
from rqsup.observe.collectors import ChildrenCollector, QueueGauges
from rqsup.observe.metrics import Metrics
from rqsup.queue.connection import sync_client

log = logging.getLogger("rqsup.metrics")


class Exporter:
    """Metrics, their collectors and the HTTP server that serves them."""

    def __init__(self, listen: str, *, url: str | None, prefix: str,
                 queues: Callable[[], list[str]], queue_gauges: bool = True,
                 pools: Callable[[], list[tuple[str, Any]]] | None = None,
                 discover: bool = False, redis_options: dict[str, Any] | None = None,
                 job_metrics: bool = True) -> None:
        self.host, self.port = parse_listen(listen)
        self.metrics = Metrics()
        # rqsup metrics serves the queues only: a registry without the job metrics.
        self.registry = registry = self.metrics.registry if job_metrics else CollectorRegistry()
        if pools is not None:
            registry.register(ChildrenCollector(pools))
        self.client = None
        if queue_gauges:
            self.client = sync_client(url, **(redis_options or {}))
            registry.register(QueueGauges(self.client, prefix, queues, discover=discover))
        self._server: Any = None

    def start(self) -> None:
        self._server, _thread = start_http_server(self.port, self.host,
                                                  registry=self.registry)
        self.port = self._server.server_port  # port 0: the one the kernel gave
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.client is not None:
            self.client.close()
