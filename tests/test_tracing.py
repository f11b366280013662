"""OpenTelemetry traces (issue 11), with the SDK's in-memory exporter, in a
process of their own; and no cost without a configured provider."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_add_and_run_make_linked_producer_and_consumer_spans(redis_url: str) -> None:
    out = subprocess.run([sys.executable, str(REPO / "tests" / "fixtures" / "trace_run.py"),
                          redis_url], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    spans = json.loads(out.stdout)
    producers = {s["span"]: s for s in spans if s["kind"] == "PRODUCER"}
    consumers = [s for s in spans if s["kind"] == "CONSUMER"]
    by_job = {s["attrs"]["rqsup.job.name"]: s for s in consumers}
    good = by_job["good"]
    assert good["name"] == "tr process" and good["status"] == "UNSET"
    assert good["attrs"]["messaging.destination.name"] == "tr"
    assert good["attrs"]["rqsup.job.attempt"] == 1 and good["attrs"]["rqsup.job.id"]
    [link] = good["links"]
    assert producers[link]["name"] == "tr publish"
    bad = by_job["bad"]
    assert bad["status"] == "ERROR" and bad["attrs"]["rqsup.error_type"] == "ValueError"
    # A child added by a running step job links to its parent's run.
    kid = by_job["kid"]
    step_runs = [s["span"] for s in consumers if s["attrs"]["rqsup.job.name"] == "step"]
    assert kid["links"] and kid["links"][0] in step_runs
    # A flow: every job of it links to the flow's producer span.
    flow_links = {by_job["parent"]["links"][0], by_job["child"]["links"][0]}
    assert len(flow_links) == 1 and producers[flow_links.pop()]["name"] == "tr publish"


def test_no_tracing_without_a_configured_provider() -> None:
    code = ("import rqsup.queue.tracehook as t, sys;"
            "assert t.tracing() is None;"
            "print('opentelemetry.sdk' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
