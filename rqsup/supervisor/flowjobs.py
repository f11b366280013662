"""Flows in the worker: what a parent sees of its children, and step jobs.

A parent (hash field ``has_children``) gets its children's return values
and ignored failures read before its processor starts (one round trip, for
parents only). Step jobs add children through the pump (``add_children``,
fenced, in order with the job's other writes) and end their attempt with
``WaitingChildren`` (``move_to_waiting_children``, sent as an end of the
attempt like RateLimited). In process mode the child sends
``("children", json)`` and the supervisor validates it here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rqsup.errors import EncodeError, InvalidOption
from rqsup.keys import job_ref
from rqsup.queue import codec, tracehook
from rqsup.queue.connection import REDIS_ERRORS, reraise_if_cancelling
from rqsup.queue.flows import FlowCore
from rqsup.queue.record import fields_of
from rqsup.queue.scripts import Batch, Command
from rqsup.supervisor.active import FlowInfo, Running

if TYPE_CHECKING:
    from rqsup.supervisor.worker import Worker


def is_parent(r: Running) -> bool:
    return bool(r.record.raw.get("has_children"))


async def fetch(w: Worker, r: Running) -> FlowInfo:
    """The parent's children values and ignored failures; retried while Redis
    is unreachable (a lost lease cancels the job's task, and this with it)."""
    keys = w.core.keys
    reqs = Batch([Command(("HGETALL", keys.job_part(r.id, "processed"))),
                  Command(("HGETALL", keys.job_part(r.id, "ignored")))])
    delay = 0.05
    while True:
        try:
            processed, ignored = await w.driver.execute(reqs)
        except REDIS_ERRORS:
            reraise_if_cancelling()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        return ({job_ref(k): v for k, v in fields_of(processed).items()},
                {job_ref(k): v for k, v in fields_of(ignored).items()})


def to_json(info: FlowInfo) -> str:
    """``{"values": {...}, "ignored": {...}}`` for a child process; the values
    are JSON already and go in as they are."""
    values = ",".join(f"{codec.encode(ref, 'child ref')}:{raw}" for ref, raw in info[0].items())
    return '{"values":{' + values + '},"ignored":' + codec.encode(info[1], "ignored") + "}"


_CORES: dict[str, FlowCore] = {}


def _flows(w: Worker) -> FlowCore:
    core = _CORES.get(w.core.prefix)
    if core is None:
        core = _CORES[w.core.prefix] = FlowCore(w.core.prefix)
    return core


def _send(w: Worker, r: Running, args: list[Any]) -> None:
    if r.lost or r.finished:
        return
    r.children_calls += 1
    w.pump.write(r.id, r.token,
                 w.core.script("add_children", r.id, r.token, r.children_calls, *args))


def _run_context(r: Running) -> str | None:
    """The trace context of the parent's run (tracing on): its children link to it."""
    if r.span is None:
        return None
    tracing = tracehook.tracing()
    return tracing.traceparent(r.span) if tracing is not None else None


def spawner(w: Worker, r: Running) -> Callable[[Any], None]:
    """``ActiveJob.add_children``: validate in the caller (errors raise in the
    processor), then queue the fenced write (from a thread: via the loop)."""
    loop = asyncio.get_running_loop()

    def spawn(children: Any) -> None:
        args = _flows(w).children_args(w.queue_name, children, _run_context(r))
        if w.mode == "async":
            _send(w, r, args)
        else:
            loop.call_soon_threadsafe(_send, w, r, args)

    return spawn


def on_children_message(w: Worker, r: Running, payload: str) -> None:
    """Process mode: a child's ``job.add_children(...)``. Invalid children fail
    the attempt when it ends (the child has moved on by now)."""
    if r.lost or r.finished or r.children_error:
        return
    try:
        args = _flows(w).children_args(w.queue_name, codec.decode(payload), _run_context(r))
    except (InvalidOption, EncodeError, ValueError) as exc:
        r.children_error = f"add_children: {exc}"
        return
    _send(w, r, args)


def children_error_info(r: Running) -> dict[str, Any]:
    return {"type": "InvalidOption", "message": r.children_error or "", "stacktrace": "",
            "control": "unrecoverable"}


def wait_children(w: Worker, r: Running) -> None:
    """The processor raised WaitingChildren: end the attempt that way."""
    if r.lost:
        return
    if r.children_error:
        from rqsup.supervisor import jobrun

        jobrun.fail(w, r, children_error_info(r))
        return
    keep = r.options.failed_retention
    r.finished = True
    w.pump.end(r.id, r.token, w.core.script("move_to_waiting_children", r.id, r.token,
                                            keep["count"], keep["age_ms"]))
