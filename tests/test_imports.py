"""The import rules of DESIGN.md section 2, checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    # As installed without the otel extra: redis-py 8 imports the OpenTelemetry
    # SDK by itself when it is there (its own observability), and the SDK
    # loads psutil; rqsup's tracing is looked up only when a provider is set.
    hide = "sys.modules['opentelemetry'] = None"
    code = f"import sys; {hide}; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_producer_api_loads_no_supervisor_psutil_or_click() -> None:
    mods = loaded_after("import rqsup; rqsup.Queue; rqsup.AsyncQueue")
    assert not {m for m in mods if m.startswith("rqsup.supervisor")}
    assert "psutil" not in mods and "click" not in mods


def test_queue_package_never_imports_the_supervisor() -> None:
    mods = loaded_after("import rqsup.queue.queue, rqsup.queue.aqueue, rqsup.queue.events")
    assert not {m for m in mods if m.startswith("rqsup.supervisor")}


def test_sandbox_imports_no_asyncio_or_redis() -> None:
    # What a child imports to boot (its processor aside).
    mods = loaded_after("import rqsup.sandbox.runtime")
    assert "asyncio" not in mods and "redis" not in mods
    assert not {m for m in mods if m.startswith(("rqsup.supervisor", "rqsup.queue"))}


def test_cli_help_stays_light() -> None:
    mods = loaded_after("import rqsup.cli")
    assert not {m for m in mods if m.startswith("rqsup.supervisor")}
    assert "redis" not in mods and "psutil" not in mods
