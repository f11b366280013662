"""OpenTelemetry traces (``pip install rqsup[otel]``), used only when a tracer
provider is configured.

An add opens a PRODUCER span and stores its context (a W3C traceparent) in
the job's options; the worker opens a CONSUMER span around the run, linked
to it, with the queue, job name, id and attempt as attributes and an error
status when the attempt fails. Children a running job adds (flows) carry
the context of that run, so their runs link to their parent's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rqsup import __version__

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("rqsup", __version__)


def enabled() -> bool:
    """A tracer provider is configured (the default proxy records nothing)."""
    return not isinstance(trace.get_tracer_provider(),
                          trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _attributes(queue: str, name: str) -> dict[str, Any]:
    return {"messaging.system": "rqsup", "messaging.destination.name": queue,
            "rqsup.job.name": name}


def traceparent(span: Any = None) -> str | None:
    """The context of ``span`` (the current span if None) as a traceparent."""
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent")


@contextmanager
def producing(queue: str, name: str, count: int = 1) -> Iterator[str | None]:
    """A PRODUCER span around an add; yields the traceparent to store."""
    attrs = _attributes(queue, name)
    if count != 1:
        attrs["messaging.batch.message_count"] = count
    with _tracer.start_as_current_span(f"{queue} publish", kind=SpanKind.PRODUCER,
                                       attributes=attrs):
        yield traceparent()


def consuming(queue: str, name: str, job_id: str, attempt: int,
              stored: str | None) -> Any:
    """A CONSUMER span for one run (a context manager), linked to the add."""
    links = []
    if stored:
        ctx = _PROPAGATOR.extract({"traceparent": stored})
        sc = trace.get_current_span(ctx).get_span_context()
        if sc.is_valid:
            links.append(Link(sc))
    attrs = {**_attributes(queue, name), "messaging.message.id": job_id,
             "rqsup.job.id": job_id, "rqsup.job.attempt": attempt}
    return _tracer.start_as_current_span(f"{queue} process", kind=SpanKind.CONSUMER,
                                         links=links, attributes=attrs,
                                         record_exception=False, set_status_on_exception=False)


def failed(span: Any, error_type: str, message: str) -> None:
    span.set_attribute("rqsup.error_type", error_type)
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"[:500]))
