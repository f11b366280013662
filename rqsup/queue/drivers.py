"""Run operations (generators of requests) on a sync or an asyncio redis-py client.

This is the only I/O layer of the producer API; the two drivers mirror each
other and hold no queue logic. A driver loads every script once, up front,
so that a pipeline never meets NOSCRIPT half-way (re-running the missing
calls afterwards would reorder them); after a Redis restart, a failover or
a new Cluster node it loads them all again (on every primary of a Cluster)
and re-runs only the calls that did not run.
"""

from __future__ import annotations

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


def _one(reply: Any) -> Any:
    """A Cluster client gives a routed command's reply as {node: reply}."""
    if isinstance(reply, dict) and len(reply) == 1:
        return next(iter(reply.values()))
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
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.loaded = False

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
                return _one(self.client.execute_command(*req.args, target_nodes=node))  # type: ignore[no-untyped-call]
            return _run(self.client, *req.args)
        return self._batch(req.requests, check=not req.errors_in_place)

    def _script(self, s: Script) -> Any:
        try:
            return _run(self.client, *_eval_args(s))
        except NoScriptError:
            self.load_scripts()
            return _run(self.client, *_eval_args(s))

    def _batch(self, reqs: Sequence[Script | Command], check: bool = True) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for r in reqs:
            pipe.execute_command(*(_eval_args(r) if isinstance(r, Script) else r.args))  # type: ignore[no-untyped-call]
        results = pipe.execute(raise_on_error=False)
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
    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self.loaded = False

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
                return _one(await self.client.execute_command(*req.args, target_nodes=node))  # type: ignore[no-untyped-call]
            return await _arun(self.client, *req.args)
        if req.errors_in_place:
            return await self.execute_each(req.requests)
        return await self._batch(req.requests)

    async def _script(self, s: Script) -> Any:
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
        for r in reqs:
            pipe.execute_command(*(_eval_args(r) if isinstance(r, Script) else r.args))
        results: list[Any] = await pipe.execute(raise_on_error=False)
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
