"""Failover under load, on real servers: a Cluster primary switched over
(CLUSTER FAILOVER) and then SIGKILLed, and a Sentinel primary SIGKILLed,
each while 5,000 jobs run in two supervisors. Nothing is lost, every job
completes, every second execution is explained by the failover, and each
supervisor completes jobs again within the bound the run states."""

from __future__ import annotations

from pathlib import Path

from rqsup.redis_topologies import LocalCluster, LocalSentinel
from tests.failover import Run


def _check(result: dict[str, object]) -> None:
    print(result)  # the numbers, in the test log
    assert result["problems"] == [], result["problems"]
    assert result["states"] == {"completed": result["jobs"]}


def test_cluster_failover_and_primary_kill_lose_nothing(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        run = Run(tmp_path, cluster.url)
        q = run.start()
        try:
            def holder() -> int:
                node = q.client.get_node_from_key(q.core.keys.wait)  # type: ignore[attr-defined]
                return int(node.port)
            run.fault_when(q, 1000, "cluster-failover", lambda: cluster.failover(holder()))
            run.fault_when(q, 2500, "primary-kill", lambda: cluster.kill_primary(holder()))
            run.finish(q)
        finally:
            run.stop()
        _check(run.verdict(q))
        q.close()


def test_sentinel_failover_loses_nothing(tmp_path: Path) -> None:
    with LocalSentinel(tmp_path / "sentinel") as setup:
        run = Run(tmp_path, setup.url)
        q = run.start()
        try:
            epoch = setup.failovers()
            run.fault_when(q, 1500, "sentinel-failover", setup.kill_primary)
            run.finish(q)
        finally:
            run.stop()
        result = run.verdict(q)
        result["sentinel_failovers"] = setup.failovers() - epoch
        _check(result)
        q.close()
