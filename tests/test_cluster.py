"""rqsup on a real 6-node Redis Cluster and a real Sentinel set: what only a
Cluster or Sentinel can show (the tests that run on both a single server
and the Cluster are marked ``also_on_cluster`` in their own modules)."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import pytest
import redis

from rqsup import AsyncQueue, InvalidOption, Queue
from rqsup.cli import main
from rqsup.keys import QueueKeys
from rqsup.queue.connection import sync_client
from rqsup.queue.flow_producer import FlowProducer
from rqsup.queue.partitioned import PartitionedQueue
from rqsup.queue.scripts import SCRIPTS
from rqsup.redis_topologies import LocalCluster, LocalSentinel
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import wait_until
from tests.procs import Supervisor, config_text, uid


def owner(cluster_url: str, key: str) -> int:
    c: Any = sync_client(cluster_url)
    try:
        return int(c.get_node_from_key(key).port)
    finally:
        c.close()


def test_queues_spread_over_the_three_primaries(redis_cluster: LocalCluster,
                                                cluster_url: str) -> None:
    # Names until every primary owns one (random names: 12 of them miss a
    # primary 2% of the time; 300 tries never in practice).
    c: Any = sync_client(cluster_url)
    names: dict[int, str] = {}
    for i in range(300):
        name = f"spread{i}-{uid()}"
        names.setdefault(int(c.get_node_from_key(QueueKeys("rqsup", name).wait).port), name)
        if len(names) == 3:
            break
    c.close()
    assert set(names) == set(redis_cluster.primaries()), names
    for port, name in names.items():
        q = Queue(name, cluster_url)
        q.add_bulk([("x", {"n": n}) for n in range(5)])
        assert q.counts()["wait"] == 5
        node = redis.Redis(port=port)  # the jobs are on the primary that owns the queue
        assert node.llen(q.core.keys.wait) == 5
        node.close()
        q.close()


def test_a_partitioned_queue_covers_every_primary_and_acts_as_one(
        redis_cluster: LocalCluster, cluster_url: str) -> None:
    q = Queue(f"emails-{uid()}", cluster_url, partitions=6)
    assert isinstance(q, PartitionedQueue)
    jobs = q.add_bulk([("send", {"n": n}) for n in range(60)])
    assert [j.id.split("#")[1] for j in jobs[:6]] == ["0", "1", "2", "3", "4", "5"]
    assert len({j.id for j in jobs}) == 60  # auto ids are unique over the partitions
    assert q.counts()["wait"] == 60
    assert {owner(cluster_url, p.core.keys.wait) for p in q.parts} == \
        set(redis_cluster.primaries())
    # An id finds its partition; a custom id and a partition_key route stably.
    assert q.get_job(jobs[7].id).data == {"n": 7}  # type: ignore[union-attr]
    custom = q.add("send", {"c": 1}, job_id="order-17")
    assert q.get_job("order-17").data == {"c": 1}  # type: ignore[union-attr]
    assert custom.queue.name == q.parts[q._pick({"job_id": "order-17"})].name
    keyed = [q.add("send", {"k": i}, partition_key="customer-9") for i in range(5)]
    assert len({j.queue.name for j in keyed}) == 1  # one partition: their order holds
    newest = q.get_jobs("wait", 0, 4)
    assert [j.data for j in newest] == [{"k": 4}, {"k": 3}, {"k": 2}, {"k": 1}, {"k": 0}]
    q.pause()
    assert q.is_paused()
    q.resume()
    with pytest.raises(InvalidOption, match="less than the queue's 6 partitions"):
        q.set_global_concurrency(4)
    caps = q.set_global_concurrency(9)
    assert len(caps) == 6
    with pytest.raises(InvalidOption, match="not available on a partitioned queue"):
        q.upsert_scheduler  # noqa: B018
    assert q.drain() == 66 and q.counts()["wait"] == 0
    q.close()


def test_supervisor_serves_a_partitioned_queue(tmp_path: Path, cluster_url: str) -> None:
    name = f"part-{uid()}"
    q = Queue(name, cluster_url, partitions=3,
              default_job_options={"remove_on_complete": False})
    q.add_bulk([("x", {"ledger": str(tmp_path / "ledger"), "ms": 0, "n": n})
                for n in range(300)])
    cfg = tmp_path / "s.toml"
    cfg.write_text(config_text(cluster_url, f"ps-{uid()}", [
        {"name": name, "processor": "tests.fixtures.chaos_procs:work", "concurrency": 3,
         "partitions": 3}]))
    sup = Supervisor(cfg, tmp_path / "s.log")
    try:
        sup.wait_log("ready", timeout=30)
        wait_until(lambda: q.counts()["completed"] == 300, "300 jobs over 3 partitions", 60)
        done = collections.Counter(j.queue.name for j in q.get_jobs("completed"))
        assert sorted(done.values()) == [100, 100, 100]
        assert f"{name}#0" in sup.log()
    finally:
        sup.signal(15)
        sup.wait_exit(30)
    q.close()


def test_partitions_in_the_config_split_concurrency_and_limits(tmp_path: Path) -> None:
    from rqsup.config.model import load_config
    from rqsup.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text(config_text("redis+cluster://h:1", "s", [
        {"name": "em", "processor": "m:f", "concurrency": 5, "partitions": 3,
         "global_concurrency": 7}]))
    queues = load_config(cfg).queues
    assert [q.name for q in queues] == ["em#0", "em#1", "em#2"]
    assert [q.concurrency for q in queues] == [2, 2, 1]
    assert [q.global_concurrency for q in queues] == [3, 2, 2]
    cfg.write_text(config_text("redis://h:1", "s", [
        {"name": "em", "processor": "m:f", "concurrency": 2, "partitions": 3}]))
    with pytest.raises(ConfigError, match=r"queues\[0\].concurrency: 2 is less than partitions"):
        load_config(cfg)


def test_request_response_flows_and_events_on_the_cluster(cluster_url: str) -> None:
    name = f"rr-{uid()}"

    async def proc(job: ActiveJob) -> Any:
        return {"twice": job.data * 2}

    async def main_() -> None:
        w = Worker(name, proc, url=cluster_url, concurrency=2)
        t = asyncio.create_task(w.run())
        aq = AsyncQueue(name, cluster_url)
        assert await aq.call("x", 21, timeout=10) == {"twice": 42}
        await w.close(5)
        await t
        await aq.close()
    asyncio.run(asyncio.wait_for(main_(), 60))
    # A flow across queues needs one slot: a braced prefix gives it one.
    flows = FlowProducer(cluster_url, prefix="{app}")
    tree = flows.add({"name": "parent", "queue": f"a-{uid()}",
                      "children": [{"name": "kid", "queue": f"b-{uid()}", "data": 1}]})
    assert tree.id and tree.children[0].id
    flows.close()
    plain = FlowProducer(cluster_url)
    with pytest.raises(InvalidOption, match="cannot run on Redis Cluster"):
        plain.add({"name": "p", "queue": f"a-{uid()}",
                   "children": [{"name": "k", "queue": f"b-{uid()}"}]})
    plain.close()


def test_admin_cli_finds_queues_on_every_primary(cluster_url: str) -> None:
    from click.testing import CliRunner

    names = [f"cli{i}-{uid()}" for i in range(6)]
    for n in names:
        with Queue(n, cluster_url) as q:
            q.add("x", {"n": 1})
    out = CliRunner().invoke(main, ["queues", "--url", cluster_url, "--json"])
    assert out.exit_code == 0, out.output
    for n in names:
        assert n in out.output


def test_sentinel_basics_and_wait_replicas(redis_sentinel: LocalSentinel) -> None:
    url = redis_sentinel.url
    q = Queue(f"sn-{uid()}", url, wait_replicas=2)
    job = q.add("x", {"a": 1})
    assert q.get_job(job.id).data == {"a": 1}  # type: ignore[union-attr]
    # Both replicas have the add once the call returns (WAIT 2 ran after it).
    for s in redis_sentinel.servers:
        if s.port != redis_sentinel.primary_port():
            c = sync_client(f"redis://127.0.0.1:{s.port}")
            assert c.exists(q.core.keys.job(job.id)) == 1
            c.close()
    q.close()


def test_scripts_reload_on_noscript_for_both_clients(cluster_url: str) -> None:
    """After a failover or a new node the scripts are missing on a primary:
    both drivers load them again on every primary and re-run only the call
    that did not run."""
    name = f"ns-{uid()}"
    q = Queue(name, cluster_url)
    q.add("x", 1)
    flusher: Any = sync_client(cluster_url)
    flusher.execute_command("SCRIPT", "FLUSH", target_nodes="primaries")
    q.add_bulk([("x", n) for n in range(3)])  # NOSCRIPT inside a pipeline
    q.add("x", 5)
    assert q.counts()["wait"] == 5

    async def main_() -> None:
        aq = AsyncQueue(name, cluster_url)
        await aq.add("y", 1)
        flusher.execute_command("SCRIPT", "FLUSH", target_nodes="primaries")
        # Many calls at once on a client whose scripts just vanished.
        await asyncio.gather(*(aq.add("y", n) for n in range(20)))
        assert (await aq.counts())["wait"] == 26
        await aq.close()
    asyncio.run(main_())

    def loaded() -> dict[str, list[int]]:
        return dict(flusher.execute_command("SCRIPT", "EXISTS", SCRIPTS["add"].sha,
                                            target_nodes="primaries"))
    assert list(loaded().values()) == [[1], [1], [1]]  # loaded again on every primary
    flusher.close()
    q.close()


@pytest.mark.also_on_cluster
def test_async_partitioned_queue_mirrors_the_sync_one(redis_url: str) -> None:
    from rqsup.queue.apartitioned import AsyncPartitionedQueue

    name = f"ap-{uid()}"

    async def proc(job: ActiveJob) -> Any:
        return job.data + 1

    async def main_() -> None:
        q = AsyncQueue(name, redis_url, partitions=3)
        assert isinstance(q, AsyncPartitionedQueue)
        jobs = await q.add_bulk([("x", n) for n in range(9)])
        assert sorted(j.id.split("#")[1] for j in jobs) == ["0", "0", "0", "1", "1", "1",
                                                            "2", "2", "2"]
        assert (await q.counts())["wait"] == 9
        assert (await q.get_job(jobs[4].id)).data == 4  # type: ignore[union-attr]
        workers = [Worker(p.name, proc, url=redis_url) for p in q.parts]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        assert await q.call("x", 41, timeout=10) == 42
        assert await q.call("x", 1, timeout=10, partition_key="k") == 2
        for w in workers:
            await w.close(5)
        await asyncio.gather(*tasks)
        assert (await q.counts())["completed"] == 11  # the first nine, then the two calls
        with pytest.raises(InvalidOption, match="partitions"):
            await q.set_rate_limit(2, 1.0)
        await q.close()
    asyncio.run(asyncio.wait_for(main_(), 60))
