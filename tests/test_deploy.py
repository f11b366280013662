"""The shipped Prometheus rules and Grafana dashboard (issue 11): promtool
checks and unit-tests the rules; every metric the rules and the dashboard
name is one rqsup exports (or a recording rule); and a real Prometheus
scrapes a real supervisor and fires an alert."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from rqsup.observe.metrics import Metrics
from tests.helpers import wait_until
from tests.procs import PROCS, config_text, uid, write

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "rqsup-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "rqsup-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "rqsup.json"
#: Metrics the collectors export at scrape time (not in the Metrics registry).
COLLECTED = {"rqsup_queue_jobs", "rqsup_queue_oldest_waiting_seconds", "rqsup_queue_paused",
             "rqsup_queue_consumers", "rqsup_queue_rate_limited", "rqsup_children",
             "rqsup_child_rss_bytes", "rqsup_child_cpu_seconds_total"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed (Debian's prometheus package: apt-get install "
                    "prometheus; ./dev test installs it)")
    return path


def exported() -> set[str]:
    """Every series name rqsup can export: registry samples plus the collectors'."""
    names = set(COLLECTED)
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        elif family.type == "info":
            names.add(family.name + "_info")
        else:
            names.add(family.name)
    return names


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\brqsup[_:][a-z_:0-9]*", expr))


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], capture_output=True,
                         text=True, cwd=RULE_TESTS.parent)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_every_alert_has_a_summary_a_runbook_entry_and_a_unit_test() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 10
    ops = (REPO / "docs" / "operations.md").read_text()
    tested = RULE_TESTS.read_text()
    for a in alerts:
        assert a["annotations"]["summary"], a["alert"]
        anchor = a["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {a['alert']}" in ops and anchor == a["alert"].lower(), a["alert"]
        assert f"alertname: {a['alert']}" in tested, f"{a['alert']} has no promtool test"


def test_rules_and_dashboard_name_only_metrics_rqsup_exports() -> None:
    known = exported() | recorded()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, (rule.get("alert") or rule.get("record"), unknown)
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    assert len(exprs) > 20
    for expr in exprs:
        unknown = metric_names(expr) - known
        assert not unknown, (expr, unknown)
    # What the issue asks the dashboard to show.
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("jobs by state", "throughput", "wait", "run time", "oldest", "loop lag",
                 "children by state", "rss", "restarts"):
        assert word in titles, word


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_a_real_prometheus_scrapes_a_supervisor_and_fires_no_consumers(
        tmp_path: Path, redis_url: str, start: Any, queues: Any) -> None:
    prometheus = tool("prometheus")
    mport, pport = free_port(), free_port()
    name, qname, orphan = f"sup-{uid()}", f"p-{uid()}", f"orphan-{uid()}"
    cfg = write(tmp_path / "s.toml", config_text(
        redis_url, name, [{"name": qname, "processor": f"{PROCS}:work"}])
        + f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    sup = start(cfg)
    q = queues(qname)
    for i in range(3):
        q.add("square", {"n": i}).wait(15)
    # A queue with waiting jobs that no supervisor serves: only `rqsup metrics`
    # (which finds every queue under the prefix) exports it.
    queues(orphan).add("stuck")
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES.read_text().replace("for: 5m", "for: 0s"))
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n"
        f"  - job_name: rqsup\n    static_configs: [{{targets: ['127.0.0.1:{mport}']}}]\n")
    metrics_port = free_port()
    exporter = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "rqsup"), "metrics", "--url", redis_url, "--listen",
         f"127.0.0.1:{metrics_port}"], stderr=subprocess.DEVNULL)
    with (tmp_path / "prometheus.yml").open("a") as f:
        f.write(f"  - job_name: rqsup-queues\n    static_configs: "
                f"[{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    prom = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    try:
        def completed() -> float:
            try:
                found = query(pport, f'sum(rqsup_jobs_completed_total{{queue="{qname}"}})')
            except OSError:
                return 0.0
            return float(found[0]["value"][1]) if found else 0.0

        wait_until(lambda: completed() == 3, "Prometheus to scrape 3 completed jobs", 30)

        def firing() -> list[dict[str, Any]]:
            try:
                return query(pport, f'ALERTS{{alertname="RqsupNoConsumers",'
                                    f'alertstate="firing",queue="{orphan}"}}')
            except OSError:
                return []

        [alert] = wait_until(firing, "RqsupNoConsumers firing for the orphan queue", 40)
        assert alert["metric"]["severity"] == "critical"
        assert not query(pport, f'ALERTS{{alertname="RqsupNoConsumers",queue="{qname}"}}')
    finally:
        for p in (prom, exporter):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        sup.signal(signal.SIGTERM)
