"""Running one job: from the hash a claim returned to an outcome queued in the pump.

:func:`start` decodes and checks the job and starts its task; the task runs
the processor (in this loop, a thread or a child) and :func:`complete` or
:func:`fail` queue the outcome with the worker's pump. A job's timeout starts
when the job is handed to its coroutine, thread or child, not when it was
claimed (a prefetched job waits for a child first). A job task never raises:
whatever goes wrong around the processor (a bug here) is logged with its
traceback and the job is given back to the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rqsup import backoff
from rqsup.errors import EncodeError, MalformedJob, WaitingChildren, error_info
from rqsup.observe.reasons import fail_reason
from rqsup.queue import codec, tracehook
from rqsup.queue.options import JobOptions
from rqsup.queue.record import JobRecord, fields_of
from rqsup.sandbox.protocol import job_frame
from rqsup.supervisor import cancels, flowjobs
from rqsup.supervisor.active import ActiveJob, InProcessPort, Running
from rqsup.supervisor.child_handle import ChildJobError
from rqsup.supervisor.joblog import job_line
from rqsup.supervisor.pool import NotDispatched
from rqsup.supervisor.processors import JobTimedOut, RawJSON

if TYPE_CHECKING:
    from rqsup.observe.metrics import QueueMetrics
    from rqsup.supervisor.worker import Worker

log = logging.getLogger("rqsup.worker")


def start(w: Worker, job_id: str, token: str, fields: Any) -> None:
    """A claim (or a hand-off) gave us this job: check it, then run it."""
    try:
        record = JobRecord(job_id, fields_of(fields))
    except (TypeError, ValueError) as exc:
        # Not even a hash reply: nothing to fail it with here; the orphan
        # check gives it back and the claim script quarantines it.
        log.error("queue %s: job %s came back unreadable from a claim (%s); giving it back",
                  w.queue_name, job_id, exc)
        w.pump.check_orphans = True
        return
    r = Running(record, token, JobOptions())
    w.running[token] = r
    try:
        record.validate()
        # Queue defaults (config) fill in what the job's own options left out;
        # decode the options once either way.
        r.options = (record.options_over(w.default_opts) if w.default_opts
                     else record.options)
        r.attempt = record.attempts_made + 1
        r.attempts = r.options.attempts if "attempts" in w.default_opts else record.attempts
    except MalformedJob as exc:
        job_line(logging.ERROR, w.queue_name, job_id, r.attempt, r.attempts,
                 "malformed: %s; failing it", exc.detail, error_type="MalformedJob")
        fail(w, r, {"type": "MalformedJob", "message": str(exc), "stacktrace": "",
                    "control": "unrecoverable"})
        return
    if w.metrics is not None:
        observe_start(w.metrics, record)
    tracing = tracehook.tracing()
    coro = execute(w, r) if tracing is None else traced_execute(w, r, tracing)
    r.task = asyncio.create_task(coro, name=f"rqsup job {job_id}")
    r.task.add_done_callback(lambda t: _ended(w, r, t))


def observe_start(qm: QueueMetrics, record: JobRecord) -> None:
    """Metrics of a claim, from the hash it returned (no Redis call): the
    wait of a first attempt, and whether this claim is a redelivery."""
    raw = record.raw
    started = raw.get("attempts_started")
    if started == "1" and not raw.get("ended"):  # a first claim, nothing ended before
        try:
            ready = int(raw["timestamp"]) + int(raw.get("delay") or 0)
            qm.wait.observe(max(0, int(raw["processed_on"]) - ready) / 1000)
        except (KeyError, ValueError):
            pass
    redeliver = raw.get("redeliver")
    if redeliver is not None and started is not None and redeliver.isdigit() \
            and started.isdigit() and int(started) == int(redeliver) + 1:
        qm.redelivered.inc()


def observe_end(qm: QueueMetrics, r: Running, outcome: str | None) -> None:
    """Metrics of an outcome Redis acknowledged."""
    name = r.record.name
    if outcome == "completed":
        qm.completed(name)
    elif outcome == "retry":
        qm.retried(name)
    elif outcome == "failed":
        etype, message = r.error or ("Error", "")
        qm.failed(name, fail_reason(etype, message))
    else:
        return
    qm.run.observe(max(0.0, time.monotonic() - r.started))


def _ended(w: Worker, r: Running, task: asyncio.Task[None]) -> None:
    """A job task must end with its outcome queued or its lease given up."""
    if task.cancelled():
        if not (r.lost or r.finished):
            if r.cancel_reason is not None:  # cancelled before its task even started
                fail(w, r, cancels.cancelled_info(r))
            else:
                w.abandon(r, "its task was cancelled")
        return
    exc = task.exception()
    if exc is None:
        return
    job_line(logging.ERROR, w.queue_name, r.id, r.attempt, r.attempts,
             "internal error around the processor", exc_info=exc)
    if not r.finished:
        w.abandon(r, f"internal error: {type(exc).__name__}: {exc}")


def _sink(w: Worker, r: Running) -> Callable[[str, str], None]:
    def sink(kind: str, payload: str) -> None:
        if r.lost or r.finished:
            return
        if kind == "children":  # process mode: the child's job.add_children
            flowjobs.on_children_message(w, r, payload)
            return
        if kind == "progress":
            script = w.core.script("progress", r.id, r.token, payload)
            if w.events.active:
                w.events.emit("progress", r.record, codec.decode(payload))
        else:
            r.log_calls += 1
            script = w.core.script("log", r.id, r.token, r.options.keep_logs, r.log_calls,
                                   payload)
        w.pump.write(r.id, r.token, script)

    if w.mode == "async":
        return sink
    loop = asyncio.get_running_loop()

    def from_thread(kind: str, payload: str) -> None:
        loop.call_soon_threadsafe(sink, kind, payload)

    return from_thread


async def traced_execute(w: Worker, r: Running, tracing: Any) -> None:
    """:func:`execute` inside a CONSUMER span linked to the job's add (tracing on)."""
    opts = r.record._json("opts") or {}
    stored = opts.get("trace") if isinstance(opts, dict) else None
    with tracing.consuming(w.queue_name, r.record.name, r.id, r.attempt,
                           stored if isinstance(stored, str) else None) as span:
        r.span = span
        await execute(w, r)


async def execute(w: Worker, r: Running) -> None:
    sink = _sink(w, r)
    timeout_s = r.options.timeout_ms / 1000 if r.options.timeout_ms else None
    loop = asyncio.get_running_loop()
    cm = asyncio.timeout(None)

    def begin() -> None:
        """The job is handed to its processor: its time starts now."""
        r.started = time.monotonic()
        if timeout_s is not None:
            cm.reschedule(loop.time() + timeout_s)

    try:
        # A parent (flows) gets what its children left before it starts.
        flow = await flowjobs.fetch(w, r) if flowjobs.is_parent(r) else None
        async with cm:
            if w.pool is not None:
                def dispatched() -> None:
                    r.dispatched = True
                    w.pump.wake.set()  # a lingering pump re-checks the children's queue
                    begin()

                # Process mode hands the child the JSON texts as stored: the
                # child decodes them (and builds the same ActiveJob).
                raw = r.record.raw
                frame = job_frame(
                    r.id, r.record.name, raw.get("data") or "null", r.attempt - 1, r.attempts,
                    r.record.timestamp_ms, raw.get("opts") or "{}",
                    flowjobs.to_json(flow) if flow is not None else None,
                    raw.get("progress") or None)
                result: Any = RawJSON(await w.pool.run(
                    r.id, frame, sink, dispatched,
                    why=lambda: "timed out" if cm.expired() else (r.stop_reason or "cancelled"),
                ))
            else:
                job = r.job = active_job(w, r, sink, flow)
                if r.cancel_reason is not None:  # cancelled before the job existed
                    job.request_cancel(r.cancel_reason)
                begin()
                if w._threads is not None:
                    fut = w._threads.submit(w.processor, job)  # type: ignore[arg-type]
                    result = await asyncio.shield(fut)
                else:
                    result = await w.processor(job)  # type: ignore[operator, misc]
    except asyncio.CancelledError:
        if r.lost:
            return  # lease lost or shutdown: the outcome is not ours to write
        if r.cancel_reason is not None:  # cancelled: the processor did not return
            fail(w, r, cancels.cancelled_info(r))
            return
        raise
    except TimeoutError as exc:
        # The processor's own TimeoutError is an ordinary failure.
        err: BaseException = exc
        if cm.expired():
            err = JobTimedOut(f"job timed out after {timeout_s:g}s (timeout option)")
        fail(w, r, error_info(err))
    except ChildJobError as exc:  # the processor raised, in its child
        if exc.info.get("control") == "waiting_children":
            flowjobs.wait_children(w, r)
        else:
            fail(w, r, exc.info)
    except NotDispatched:
        r.lost = True  # never started: given back with the rest at close
    except WaitingChildren:  # step jobs: not a failure, not a completion
        flowjobs.wait_children(w, r)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        fail(w, r, r.job.error_info(exc) if r.job is not None else error_info(exc))
    else:
        complete(w, r, result)
    finally:
        # The job, its port and its sink refer back to r: break the cycle now,
        # or every job waits for the garbage collector.
        r.job = None


def active_job(w: Worker, r: Running, sink: Callable[[str, str], None],
               flow: Any) -> ActiveJob:
    """The job a coroutine or thread processor gets: the same class, with the
    same attributes, as a child's (rqsup.sandbox.job)."""
    rec = r.record
    values, ignored = flow if flow is not None else ({}, {})
    stored = rec._json("opts") or {}
    return ActiveJob(
        rec.id, rec.name, rec.data, port=InProcessPort(sink, flowjobs.spawner(w, r)),
        attempts_made=r.attempt - 1, attempts=r.attempts, timestamp_ms=rec.timestamp_ms,
        options={**w.default_opts, **stored}, progress=rec.progress,
        children_values={ref: codec.decode(v) for ref, v in values.items()},
        ignored_failures=ignored)


def complete(w: Worker, r: Running, result: Any) -> None:
    if r.lost:
        return
    if r.children_error:
        fail(w, r, flowjobs.children_error_info(r))
        return
    try:
        if isinstance(result, RawJSON):
            encoded = result.text  # encoded (and checked) by the child
        else:
            encoded = codec.encode(result, f"result of job {r.id}")
    except EncodeError as exc:
        info = error_info(exc)
        info["control"] = "unrecoverable"
        fail(w, r, info)
        return
    keep = r.options.completed_retention
    r.finished = True
    if w.events.active:
        r.result = codec.decode(encoded) if isinstance(result, RawJSON) else result
    w.pump.complete(r.id, r.token, [r.id, r.token, encoded, keep["count"], keep["age_ms"]])


def fail(w: Worker, r: Running, info: dict[str, Any]) -> None:
    if r.lost:
        return
    control = info.get("control")
    if control == "rate_limited":  # RateLimited: not a failure
        r.finished = True
        delay_ms = round(min(max(float(info.get("delay_s") or 0), 0.0), 86_400.0) * 1000)
        w.pump.end(r.id, r.token, w.core.script("rate_limited", r.id, r.token, delay_ms))
        return
    if control == "delayed" or control == "waiting":  # DelayedError / WaitingError
        r.finished = True
        due = int(info.get("until_ms") or 0) if control == "delayed" else 0
        w.pump.end(r.id, r.token, w.core.script("move_back", r.id, r.token, due))
        return
    message = str(info.get("message") or info.get("type") or "error")
    etype = str(info.get("type") or "Error")
    if r.span is not None:
        tracing = tracehook.tracing()
        if tracing is not None:
            tracing.failed(r.span, etype, message)
    delay_ms = -1
    if control != "unrecoverable" and r.attempt < r.attempts:
        try:
            delay_ms = backoff.retry_delay_ms(
                r.options.backoff, r.attempt, etype, message, r.record.raw.get("data"),
                w.strategies,
            )
        except Exception as exc:  # a bad or unknown custom strategy
            message = f"{message}; no retry: {exc}"
            delay_ms = -1
    keep = r.options.failed_retention
    r.finished = True
    r.error = (etype, message[:300])
    r.retry_delay_ms = delay_ms
    w.pump.fail(r.id, r.token, [
        r.id, r.token, message[:4000], etype, str(info.get("stacktrace") or ""), delay_ms,
        keep["count"], keep["age_ms"], r.attempts if "attempts" in w.default_opts else "",
    ])
