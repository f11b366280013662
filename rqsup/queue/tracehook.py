"""Where the producer API finds optional tracing (rqsup.observe.tracing).

Looked up by name the first time it is needed, never imported by the queue
package: without OpenTelemetry installed, one ``find_spec`` per process and
a global check per add are the whole cost.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_tracing: Any = False  # False: not looked up yet; None: no OpenTelemetry


def tracing() -> Any:
    """rqsup.observe.tracing when OpenTelemetry is installed and a tracer
    provider is configured, else None."""
    global _tracing
    if _tracing is False:
        found = importlib.util.find_spec("opentelemetry") is not None
        _tracing = importlib.import_module("rqsup.observe.tracing") if found else None
    if _tracing is None or not _tracing.enabled():
        return None
    return _tracing


def with_trace(opts_json: str, traceparent: str | None) -> str:
    """A job's stored options with the producer's trace context added
    (``"trace"``: a W3C traceparent; unknown to JobOptions, so ignored)."""
    if not traceparent:
        return opts_json
    entry = f'"trace":"{traceparent}"'
    return "{" + entry + "}" if opts_json == "{}" else opts_json[:-1] + "," + entry + "}"
