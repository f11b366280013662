"""Adding flows: :class:`FlowProducer` (sync) and :class:`AsyncFlowProducer`.

Both drive :class:`rqsup.queue.flows.FlowCore`; see that module for the tree
format and docs/decisions.md ("Flows") for the behaviour.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis

from rqsup.queue import codec, tracehook
from rqsup.queue.connection import async_client, is_cluster, sync_client
from rqsup.queue.drivers import AsyncDriver, SyncDriver
from rqsup.queue.flows import FlowCore, FlowJob


def _root(tree: Any) -> tuple[str, str]:
    """The queue and name of a flow's root, for its producer span."""
    if isinstance(tree, dict):
        return str(tree.get("queue") or "?"), str(tree.get("name") or "?")
    return "?", "?"


class FlowProducer:
    """Add flows (a parent and its children, nested, across queues) atomically.

    ``FlowProducer("redis://host:6379/0")`` or ``FlowProducer(connection=client)``.
    ``add({"name", "queue", "data", "opts", "children": [...]})`` creates every
    job in one script call and returns the tree of ids (:class:`FlowJob`).
    """

    def __init__(self, url: str | None = None, *, connection: redis.Redis | None = None,
                 prefix: str = "rqsup",
                 max_data_bytes: int = codec.DEFAULT_MAX_DATA_BYTES) -> None:
        self.client = connection if connection is not None else sync_client(url)
        self._own_client = connection is None
        self.core = FlowCore(prefix, cluster=is_cluster(self.client),
                             max_data_bytes=max_data_bytes)
        self._driver = SyncDriver(self.client)

    def __repr__(self) -> str:
        return f"FlowProducer(prefix={self.core.prefix!r})"

    def close(self) -> None:
        """Release the connection; using the producer afterwards raises ClosedError."""
        self._driver.close(repr(self))
        if self._own_client:
            self.client.close()

    def __enter__(self) -> FlowProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, tree: Any) -> FlowJob:
        """Add a flow; nothing is written when any job of it is invalid. A
        child's ``opts`` may carry ``failure_policy``: "fail" (default),
        "ignore", "remove" or "continue" (see rqsup.queue.flows). An
        existing custom id of the root: nothing is added (``duplicated``);
        of another job: InvalidOption."""
        tracing = tracehook.tracing()
        if tracing is None:
            return self._driver.drive(self.core.op_add(tree))
        with tracing.producing(*_root(tree)):
            return self._driver.drive(self.core.op_add(tree))

    def add_bulk(self, trees: list[Any]) -> list[FlowJob]:
        """Add several flows atomically (one script call): all or none."""
        return self._driver.drive(self.core.op_add_bulk(trees))

    def get_flow(self, queue: str, job_id: str, depth: int = 10,
                 max_children: int = 1000) -> dict[str, Any] | None:
        """The job and its children with their states (nested dicts), or None."""
        return self._driver.drive(self.core.op_get_flow(queue, job_id, depth, max_children))


class AsyncFlowProducer:
    """:class:`FlowProducer` for asyncio code (same methods, awaited)."""

    def __init__(self, url: str | None = None, *, connection: aredis.Redis | None = None,
                 prefix: str = "rqsup",
                 max_data_bytes: int = codec.DEFAULT_MAX_DATA_BYTES) -> None:
        self.client = connection if connection is not None else async_client(url)
        self._own_client = connection is None
        self.core = FlowCore(prefix, cluster=is_cluster(self.client),
                             max_data_bytes=max_data_bytes)
        self._driver = AsyncDriver(self.client)

    def __repr__(self) -> str:
        return f"AsyncFlowProducer(prefix={self.core.prefix!r})"

    async def close(self) -> None:
        self._driver.close(repr(self))
        if self._own_client:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncFlowProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add(self, tree: Any) -> FlowJob:
        tracing = tracehook.tracing()
        if tracing is None:
            return await self._driver.drive(self.core.op_add(tree))
        with tracing.producing(*_root(tree)):
            return await self._driver.drive(self.core.op_add(tree))

    async def add_bulk(self, trees: list[Any]) -> list[FlowJob]:
        return await self._driver.drive(self.core.op_add_bulk(trees))

    async def get_flow(self, queue: str, job_id: str, depth: int = 10,
                       max_children: int = 1000) -> dict[str, Any] | None:
        return await self._driver.drive(self.core.op_get_flow(queue, job_id, depth, max_children))
