"""Run operations (generators of requests) on a sync or an asyncio redis-py client.

This is the only I/O layer of the producer API; the two drivers mirror each
other and hold no queue logic. A driver loads every script once, up front,
so that a pipeline never meets NOSCRIPT half-way (re-running the missing
calls afterwards would reorder them); after a Redis restart, a failover or
a new Cluster node it loads them all again (on every primary of a Cluster)
and re-runs only the calls that did not run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from rqsup.errors import ClosedError
from rqsup.queue.connection import is_cluster
from rqsup.queue.scripts import SCRIPTS, Command, Op, Request, Script

T = TypeVar("T")


def _eval_args(s: Script) -> tuple[Any, ...]:
    return ("EVALSHA", SCRIPTS[s.name].sha, len(s.keys), *s.keys, *s.args)


def _run(client: redis.Redis, *args: Any) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


async def _arun(client: aredis.Redis, *args: Any) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


#: The writes that ``wait_replicas`` makes wait for replicas: a job accepted,
#: a result recorded. A lost claim or renewal is recovered (the job runs again).
DURABLE = frozenset({"add", "add_flow", "add_children", "add_to_parent", "complete", "fail",
                     "move_to_waiting_children", "cancel"})
#: How long a WAIT waits for the replicas before the call returns anyway.
WAIT_TIMEOUT_MS = 1000
log = logging.getLogger("rqsup.redis")


def _pipeline_plan(client: Any, reqs: Sequence[Script | Command],
                   wait_replicas: int) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The pipeline's commands: each request, then the WAITs that make its
    durable writes wait for replicas (on a Cluster one per node written,
    sent on that node's connection, as WAIT counts that connection's writes)."""
    plan: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for r in reqs:
        if isinstance(r, Script):
            plan.append((_eval_args(r), {}))
        elif r.route is not None and is_cluster(client):
            plan.append((r.args, {"target_nodes": client.get_node_from_key(r.route)}))
        else:
            plan.append((r.args, {}))
    if wait_replicas <= 0:
        return plan
    durable = [r for r in reqs if isinstance(r, Script) and r.name in DURABLE and r.keys]
    if not durable:
        return plan
    wait = ("WAIT", wait_replicas, WAIT_TIMEOUT_MS)
    if not is_cluster(client):
        return [*plan, (wait, {})]
    nodes = {}
    for r in durable:
        node = client.get_node_from_key(r.keys[0])
        nodes[node.name] = node
    return plan + [(wait, {"target_nodes": n}) for n in nodes.values()]


def _note_waits(replies: list[Any], wanted: int) -> None:
    for got in replies:
        if isinstance(got, Exception) or int(got) < wanted:
            log.warning("wait_replicas = %d: %s within %d ms; the write stands on the "
                        "primary", wanted, f"only {got} replica(s) confirmed"
                        if not isinstance(got, Exception) else f"WAIT failed ({got})",
                        WAIT_TIMEOUT_MS)


def _needs_wait(req: Script, wait_replicas: int) -> bool:
    return wait_replicas > 0 and req.name in DURABLE


def _routed(reply: Any) -> Any:
    """A Cluster client gives a routed SCAN's cursor per node ({node: cursor});
    routed to one node, it is that node's cursor, as on one Redis."""
    if isinstance(reply, list | tuple) and len(reply) == 2 and isinstance(reply[0], dict):
        return (next(iter(reply[0].values()), 0), reply[1])
    return reply


def _check(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


class _Closable:
    """A driver refuses every request once its owner is closed, so a closed
    Queue or FlowProducer never writes (even on a shared connection)."""

    closed_by: str | None = None

    def close(self, owner: str) -> None:
        self.closed_by = owner

    def _refuse_if_closed(self) -> None:
        if self.closed_by is not None:
            raise ClosedError(f"{self.closed_by} is closed: create a new one to use it again")


class SyncDriver(_Closable):
    """``wait_replicas``: see :data:`DURABLE` and docs/cluster.md."""

    def __init__(self, client: redis.Redis, wait_replicas: int = 0) -> None:
        self.client = client
        self.loaded = False
        self.wait_replicas = wait_replicas

    def load_scripts(self) -> None:
        if is_cluster(self.client):
            # SCRIPT LOAD goes to every primary; a cluster pipeline cannot
            # send one command to several nodes.
            for s in SCRIPTS.values():
                self.client.script_load(s.source)
            self.loaded = True
            return
        pipe = self.client.pipeline(transaction=False)
        for s in SCRIPTS.values():
            pipe.execute_command("SCRIPT", "LOAD", s.source)  # type: ignore[no-untyped-call]
        pipe.execute()
        self.loaded = True

    def execute(self, req: Request) -> Any:
        self._refuse_if_closed()
        if not self.loaded:
            self.load_scripts()
        if isinstance(req, Script):
            return self._script(req)
        if isinstance(req, Command):
            if req.route is not None and is_cluster(self.client):
                node = self.client.get_node_from_key(req.route)  # type: ignore[attr-defined]
                return _routed(self.client.execute_command(*req.args, target_nodes=node))  # type: ignore[no-untyped-call]
            return _run(self.client, *req.args)
        return self._batch(req.requests, check=not req.errors_in_place)

    def _script(self, s: Script) -> Any:
        if _needs_wait(s, self.wait_replicas):
            return self._batch([s])[0]
        try:
            return _run(self.client, *_eval_args(s))
        except NoScriptError:
            self.load_scripts()
            return _run(self.client, *_eval_args(s))

    def _batch(self, reqs: Sequence[Script | Command], check: bool = True) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for args, kwargs in _pipeline_plan(self.client, reqs, self.wait_replicas):
            pipe.execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        results = pipe.execute(raise_on_error=False)
        _note_waits(results[len(reqs):], self.wait_replicas)
        results = results[:len(reqs)]
        if any(isinstance(r, NoScriptError) for r in results):
            self.load_scripts()
            for i, res in enumerate(results):
                if isinstance(res, NoScriptError):
                    # That call did not run; the others did and must not run twice.
                    results[i] = self._script(reqs[i])  # type: ignore[arg-type]
        return _check(results) if check else results

    def drive(self, op: Op[T]) -> T:
        try:
            req = next(op)
            while True:
                req = op.send(self.execute(req))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


class AsyncDriver(_Closable):
    """``wait_replicas``: see :data:`DURABLE` and docs/cluster.md."""

    def __init__(self, client: aredis.Redis, wait_replicas: int = 0) -> None:
        self.client = client
        self.loaded = False
        self.wait_replicas = wait_replicas

    async def load_scripts(self) -> None:
        if is_cluster(self.client):
            for s in SCRIPTS.values():
                await self.client.script_load(s.source)
            self.loaded = True
            return
        pipe = self.client.pipeline(transaction=False)
        for s in SCRIPTS.values():
            pipe.execute_command("SCRIPT", "LOAD", s.source)
        await pipe.execute()
        self.loaded = True

    async def execute(self, req: Request) -> Any:
        self._refuse_if_closed()
        if not self.loaded:
            await self.load_scripts()
        if isinstance(req, Script):
            return await self._script(req)
        if isinstance(req, Command):
            if req.route is not None and is_cluster(self.client):
                node = self.client.get_node_from_key(req.route)  # type: ignore[attr-defined]
                return _routed(await self.client.execute_command(*req.args, target_nodes=node))  # type: ignore[no-untyped-call]
            return await _arun(self.client, *req.args)
        if req.errors_in_place:
            return await self.execute_each(req.requests)
        return await self._batch(req.requests)

    async def _script(self, s: Script) -> Any:
        if _needs_wait(s, self.wait_replicas):
            return (await self._batch([s]))[0]
        try:
            return await _arun(self.client, *_eval_args(s))
        except NoScriptError:
            await self.load_scripts()
            return await _arun(self.client, *_eval_args(s))

    async def _batch(self, reqs: Sequence[Script | Command]) -> list[Any]:
        return _check(await self.execute_each(reqs))

    async def execute_each(self, reqs: Sequence[Script | Command]) -> list[Any]:
        """Run requests in one round trip; each one's reply, or the error it
        raised, in its place (one bad request does not hide the others'
        replies). Raises only when the round trip itself failed."""
        self._refuse_if_closed()
        if not self.loaded:
            await self.load_scripts()
        pipe = self.client.pipeline(transaction=False)
        for args, kwargs in _pipeline_plan(self.client, reqs, self.wait_replicas):
            pipe.execute_command(*args, **kwargs)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        _note_waits(results[len(reqs):], self.wait_replicas)
        results = results[:len(reqs)]
        if any(isinstance(r, NoScriptError) for r in results):
            await self.load_scripts()
            for i, res in enumerate(results):
                if isinstance(res, NoScriptError):
                    try:
                        results[i] = await self._script(reqs[i])  # type: ignore[arg-type]
                    except redis.ResponseError as exc:
                        results[i] = exc
        return results

    async def drive(self, op: Op[T]) -> T:
        try:
            req = next(op)
            while True:
                req = op.send(await self.execute(req))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
