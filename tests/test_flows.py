"""Flows against a real redis-server: parents wait in waiting-children for their
children (nested, across queues), failure policies, step jobs, get_flow, removal,
bad input, and a supervisor killed while a flow is half done."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rqsup import (
    AsyncFlowProducer,
    AsyncQueue,
    EncodeError,
    FlowProducer,
    InvalidOption,
    JobFailed,
    Queue,
    WaitingChildren,
)
from rqsup.queue.connection import sync_client
from rqsup.queue.flows import FlowCore
from rqsup.supervisor import ActiveJob, Worker
from tests.helpers import await_until, wait_until

PROCS = "tests.fixtures.flow_procs:work"


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout))


def uid() -> str:
    return uuid.uuid4().hex[:6]


async def proc(job: ActiveJob) -> Any:
    """Async processor: "boom" raises, "parent"/"mid" report their children."""
    if job.name == "boom":
        raise ValueError(f"boom {job.id}")
    if job.name in ("parent", "mid", "root"):
        return {"values": job.children_values(), "ignored": job.ignored_failures()}
    return job.data


@contextlib.asynccontextmanager
async def workers(redis_url: str, *specs: tuple[str, Any, str]) -> AsyncIterator[list[Worker]]:
    """Run a worker per (queue, processor, mode); closed at the end."""
    ws = [Worker(q, p, url=redis_url, mode=m, concurrency=4, block_timeout_s=1.0,
                 prefetch=0 if m == "process" else None)
          for q, p, m in specs]
    for w in ws:
        await w.prepare()
    tasks = [asyncio.create_task(w.run()) for w in ws]
    try:
        yield ws
    finally:
        for w in ws:
            await w.close(5)
        await asyncio.gather(*tasks)


def claim(q: Queue, n: int = 10, lease_ms: int = 30_000) -> list[tuple[str, str]]:
    reply = q._driver.execute(q.core.script("complete", 0, n, "w1", lease_ms))
    return [(i.decode(), t.decode()) for i, t, _f in reply[1][1:]]


def complete(q: Queue, job_id: str, token: str, value: str) -> int:
    reply = q._driver.execute(q.core.script("complete", 1, 0, "w1", 30_000,
                                            job_id, token, value, -1, -1))
    return int(reply[0][0])


def fail(q: Queue, job_id: str, token: str, reason: str, retry_delay_ms: int = -1) -> int:
    return int(q._driver.execute(q.core.script(
        "fail", 1, job_id, token, reason, "ValueError", "", retry_delay_ms, -1, -1, ""))[0])


def all_keys(redis_url: str) -> list[bytes]:
    client = sync_client(redis_url)
    try:
        return sorted(client.keys("*"))
    finally:
        client.close()


# -- the happy path -----------------------------------------------------------------------


def test_nested_flow_across_two_queues_completes_with_children_values(redis_url: str) -> None:
    qa, qb = f"fa{uid()}", f"fb{uid()}"

    async def main() -> None:
        fp = AsyncFlowProducer(redis_url)
        root = await fp.add({"name": "root", "queue": qa, "data": 0, "children": [
            {"name": "leaf", "queue": qb, "data": 1},
            {"name": "mid", "queue": qb, "children": [
                {"name": "leaf", "queue": qa, "data": 2},
                {"name": "leaf", "queue": qa, "data": 3, "opts": {"priority": 5}},
                {"name": "leaf", "data": 4, "opts": {"delay": 0.2}},  # queue: its parent's
            ]},
        ]})
        # ids come back as a tree, in the order given; auto ids per queue
        assert (root.queue, root.id) == (qa, "1")
        assert [(c.queue, c.id, c.name) for c in root.children] == [
            (qb, "1", "leaf"), (qb, "2", "mid")]
        assert [(c.queue, c.id) for c in root.children[1].children] == [
            (qa, "2"), (qa, "3"), (qb, "3")]
        a, b = AsyncQueue(qa, redis_url), AsyncQueue(qb, redis_url)
        assert (await a.counts())["waiting-children"] == 1
        assert (await b.counts())["waiting-children"] == 1
        assert await (await a.get_job("2")).state() == "wait"
        assert await (await a.get_job("3")).state() == "prioritized"
        assert await (await b.get_job("3")).state() == "delayed"

        async with workers(redis_url, (qa, proc, "async"), (qb, proc, "async")):
            result = await a.wait_for(root.id, 15)
        assert result == {"ignored": {}, "values": {
            f"{qb}:1": 1,
            f"{qb}:2": {"ignored": {}, "values": {f"{qa}:2": 2, f"{qa}:3": 3, f"{qb}:3": 4}},
        }}
        rec = await a.get_job(root.id)
        assert rec.attempts_started == 1  # the parent ran once, after its children
        assert (await a.counts())["completed"] == 3 and (await b.counts())["completed"] == 3

        flow = await fp.get_flow(qa, root.id)
        assert flow is not None and flow["state"] == "completed"
        first = flow["children"][0]
        assert (first["queue"], first["id"], first["state"], first["return_value"]) == (
            qb, "1", "completed", 1)
        mid = flow["children"][1]
        assert mid["name"] == "mid" and mid["state"] == "completed"
        assert sorted((c["queue"], c["id"], c["return_value"]) for c in mid["children"]) == [
            (qa, "2", 2), (qa, "3", 3), (qb, "3", 4)]
        assert await a.get_flow(root.id, depth=0) == {**flow, "children": []}
        await fp.close()
        await a.close()
        await b.close()

    run(main)


def test_flow_in_one_queue_sync_producer_and_thread_workers(redis_url: str) -> None:
    q = f"fs{uid()}"

    def leaf(job: ActiveJob) -> Any:
        if job.name == "parent":
            return sum(job.children_values().values())
        return job.data * 10

    with FlowProducer(redis_url) as fp:
        root = fp.add({"name": "parent", "queue": q,
                       "children": [{"name": "leaf", "data": n} for n in range(20)]})
    assert len(root.children) == 20

    async def main() -> None:
        qq = AsyncQueue(q, redis_url)
        async with workers(redis_url, (q, leaf, "thread")):
            assert await qq.wait_for(root.id, 15) == 1900
        await qq.close()

    run(main)


# -- failure policies ---------------------------------------------------------------------


def test_a_retried_child_leaves_its_parent_alone_and_fail_policy_fails_it_up(
        redis_url: str) -> None:
    qa, qb = f"pa{uid()}", f"pb{uid()}"
    fp = FlowProducer(redis_url)
    top = fp.add({"name": "top", "queue": qa, "children": [
        {"name": "mid", "queue": qb, "children": [
            {"name": "child", "queue": qa, "opts": {"attempts": 2}},
            {"name": "other", "queue": qa},
        ]},
    ]})
    a, b = Queue(qa, redis_url), Queue(qb, redis_url)
    mid = top.children[0]
    child = mid.children[0]
    jobs = dict(claim(a))
    # The first failure is retried: the parents do not move.
    assert fail(a, child.id, jobs[child.id], "first", retry_delay_ms=0) == 1
    assert b.get_job(mid.id).state() == "waiting-children"
    assert a.get_job(top.id).state() == "waiting-children"
    jobs.update(claim(a))
    # For good: mid (policy fail) fails, and top (policy fail) with it.
    assert fail(a, child.id, jobs[child.id], "second") == 3
    m = b.get_job(mid.id)
    assert m.state() == "failed" and m.error_type == "ChildFailed"
    assert m.failed_reason == f"child {qa}:{child.id} failed: second"
    t = a.get_job(top.id)
    assert t.state() == "failed"
    assert t.failed_reason == f"child {qb}:{mid.id} failed: child {qa}:{child.id} failed: second"
    # The sibling runs on; its completion is recorded but moves nothing.
    assert complete(a, mid.children[1].id, jobs[mid.children[1].id], '"ok"') == 0
    assert m.state() == "failed" and t.state() == "failed"
    flow = fp.get_flow(qa, top.id)
    assert flow is not None
    kids = flow["children"][0]["children"]
    assert [(c["id"], c["state"]) for c in kids] == [(child.id, "failed"),
                                                      (mid.children[1].id, "completed")]
    with pytest.raises(JobFailed, match="ChildFailed"):
        a.wait_for(top.id, 5)
    fp.close()


def test_ignore_and_remove_policies_let_the_parent_run(redis_url: str) -> None:
    q = f"pi{uid()}"

    async def main() -> None:
        fp = AsyncFlowProducer(redis_url)
        root = await fp.add({"name": "parent", "queue": q, "children": [
            {"name": "boom", "opts": {"failure_policy": "ignore"}},
            {"name": "boom", "opts": {"failure_policy": "remove"}},
            {"name": "leaf", "data": "fine"},
        ]})
        ignored, _removed, fine = (c.id for c in root.children)
        qq = AsyncQueue(q, redis_url)
        async with workers(redis_url, (q, proc, "async")):
            result = await qq.wait_for(root.id, 15)
        await qq.close()
        assert result == {"values": {f"{q}:{fine}": "fine"},
                          "ignored": {f"{q}:{ignored}": f"boom {ignored}"}}
        flow = await fp.get_flow(q, root.id)
        assert flow is not None
        # The removed dependency is forgotten; the ignored failure is listed.
        assert [(c["id"], c["state"]) for c in flow["children"]] == [
            (ignored, "failed"), (fine, "completed")]
        assert flow["children"][0]["failed_reason"] == f"boom {ignored}"
        await fp.close()

    run(main)


def test_a_child_crashing_its_process_fails_or_is_ignored_by_policy(redis_url: str) -> None:
    qp, qc = f"cp{uid()}", f"cc{uid()}"

    async def main() -> None:
        fp = AsyncFlowProducer(redis_url)
        strict = await fp.add({"name": "parent", "queue": qp, "children": [
            {"name": "crash", "queue": qc, "opts": {"attempts": 1}},
            {"name": "leaf", "queue": qc, "data": {"n": 1}},
        ]})
        lenient = await fp.add({"name": "parent", "queue": qp, "children": [
            {"name": "crash", "queue": qc, "opts": {"failure_policy": "ignore"}},
            {"name": "leaf", "queue": qc, "data": {"n": 2}},
        ]})
        p = AsyncQueue(qp, redis_url)
        async with workers(redis_url, (qp, proc, "async"), (qc, PROCS, "process")):
            with pytest.raises(JobFailed) as info:
                await p.wait_for(strict.id, 30)
            crashed = strict.children[0].id
            assert info.value.error_type == "ChildFailed"
            assert info.value.message == (
                f"child {qc}:{crashed} failed: child exited with code 3")
            result = await p.wait_for(lenient.id, 30)
        crashed2, leaf2 = (c.id for c in lenient.children)
        assert result == {"values": {f"{qc}:{leaf2}": 2},
                          "ignored": {f"{qc}:{crashed2}": "child exited with code 3"}}
        await fp.close()
        await p.close()

    run(main)


def test_a_stalled_child_failed_by_the_sweeper_fails_its_parent(redis_url: str) -> None:
    q = f"st{uid()}"
    fp = FlowProducer(redis_url)
    root = fp.add({"name": "parent", "queue": q, "children": [{"name": "c"}]})
    qq = Queue(q, redis_url)
    [(cid, _tok)] = claim(qq, lease_ms=1)
    wait_until(lambda: qq._driver.execute(qq.core.script("sweep_stalled", 0, 0, 0, 100, -1, -1))[2],
               "the sweep to fail the stalled child")
    parent = qq.get_job(root.id)
    assert parent.state() == "failed"
    assert parent.failed_reason.startswith(f"child {q}:{cid} failed: job stalled 1 times")
    fp.close()


# -- step jobs ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "thread"])
def test_step_job_adds_children_and_resumes_when_they_finish(redis_url: str, mode: str) -> None:
    q, qc = f"sj{uid()}", f"sc{uid()}"
    runs: list[dict[str, Any]] = []

    def step(job: ActiveJob) -> Any:
        values = job.children_values()
        runs.append(values)
        if not values:
            job.add_children([{"name": "leaf", "queue": qc, "data": n} for n in (1, 2, 3)])
            with pytest.raises(InvalidOption, match="failure_policy"):
                job.add_children([{"name": "x", "opts": {"failure_policy": "maybe"}}])
            raise WaitingChildren()
        return sum(values.values())

    async def astep(job: ActiveJob) -> Any:
        return step(job)

    async def main() -> None:
        qq = AsyncQueue(q, redis_url)
        job = await qq.add("step", None)
        async with workers(redis_url, (q, astep if mode == "async" else step, mode),
                           (qc, proc, "async")):
            assert await qq.wait_for(job.id, 15) == 6
        assert len(runs) == 2 and runs[1] == {f"{qc}:1": 1, f"{qc}:2": 2, f"{qc}:3": 3}
        rec = await qq.get_job(job.id)
        assert rec.attempts_made == 1  # waiting for children spent no attempt
        await qq.close()

    run(main)


def test_step_job_in_process_mode_and_invalid_children_fail_it(redis_url: str) -> None:
    q = f"sp{uid()}"

    async def main() -> None:
        qq = AsyncQueue(q, redis_url)
        job = await qq.add("step", {"ns": [4, 5]})
        bad = await qq.add("bad-step", None)
        async with workers(redis_url, (q, PROCS, "process")):
            assert await qq.wait_for(job.id, 30) == [4, 5]
            with pytest.raises(JobFailed, match="failure_policy must be one of"):
                await qq.wait_for(bad.id, 30)
        await qq.close()

    run(main)


def test_waiting_children_without_children_fails_and_a_failed_child_fails_the_step(
        redis_url: str) -> None:
    q = f"sw{uid()}"
    state: dict[str, int] = {"n": 0}

    async def lonely(job: ActiveJob) -> Any:
        if job.name == "lonely":
            raise WaitingChildren()
        if job.name == "boom":
            raise ValueError("child broke")
        # "step": add a child that fails while we still run, then ask to wait
        job.add_children([{"name": "boom"}])
        state["n"] += 1
        probe = AsyncQueue(q, redis_url)

        async def child_failed() -> bool:
            return (await probe.counts())["failed"] > 0

        await await_until(child_failed, "the new child to fail while its parent runs")
        await probe.close()
        raise WaitingChildren()

    async def main() -> None:
        qq = AsyncQueue(q, redis_url)
        a = await qq.add("lonely", None)
        b = await qq.add("step", None)
        async with workers(redis_url, (q, lonely, "async")):
            with pytest.raises(JobFailed, match="has no children") as e1:
                await qq.wait_for(a.id, 15)
            assert e1.value.error_type == "NoChildren"
            with pytest.raises(JobFailed, match="child broke") as e2:
                await qq.wait_for(b.id, 15)
            assert e2.value.error_type == "ChildFailed"
        assert state["n"] == 1
        await qq.close()

    run(main)


def test_add_children_and_the_move_are_fenced_and_resends_change_nothing(
        redis_url: str) -> None:
    q = f"ac{uid()}"
    qq = Queue(q, redis_url)
    job = qq.add("step")
    [(jid, tok)] = claim(qq, 1)
    args = FlowCore().children_args(q, [{"name": "c", "data": 1}])

    def add(seq: int, token: str = tok) -> int:
        return int(qq._driver.execute(qq.core.script("add_children", jid, token, seq, *args)))

    def move(token: str = tok) -> int:
        return int(qq._driver.execute(qq.core.script("move_to_waiting_children", jid, token,
                                                     -1, -1)))

    assert add(1) == 0 and add(1) == 0  # the second is a resend of call 1
    assert qq.counts()["wait"] == 1
    assert add(2) == 0 and qq.counts()["wait"] == 2
    assert add(3, token="12345") == -2  # another token: the lease is not ours
    assert move() == 1 and move() == 0  # waiting-children; a resend is recognised
    assert job.state() == "waiting-children" and add(3) == -3
    for cid, ctok in claim(qq):
        assert complete(qq, cid, ctok, "1") == 0
    assert job.state() == "wait"
    assert qq.get_flow(job.id)["children"][0]["return_value"] == 1


# -- reading, removing, cleaning ----------------------------------------------------------


def test_remove_parent_removes_pending_children_but_not_running_ones(redis_url: str) -> None:
    qa, qb = f"ra{uid()}", f"rb{uid()}"
    fp = FlowProducer(redis_url)
    root = fp.add({"name": "root", "queue": qa, "children": [
        {"name": "running", "queue": qb},
        {"name": "mid", "queue": qb, "children": [
            {"name": "leaf", "queue": qa, "opts": {"delay": 60}},
            {"name": "leaf", "queue": qb, "opts": {"priority": 3}},
        ]},
    ]})
    a, b = Queue(qa, redis_url), Queue(qb, redis_url)
    [(running, token)] = claim(b, 1)
    assert running == root.children[0].id
    a.get_job(root.id).remove()
    assert {s: n for s, n in a.counts().items() if n} == {}
    assert {s: n for s, n in b.counts().items() if n} == {"active": 1}
    # The running child finishes normally; its parent is gone.
    assert complete(b, running, token, "1") == 0
    assert b.get_job(running).state() == "completed"
    left = [k for k in all_keys(redis_url) if b":job:" in k]
    assert left == [f"rqsup:{{{qb}}}:job:{running}".encode()]
    fp.close()


def test_removing_or_draining_a_child_releases_its_parent(redis_url: str) -> None:
    q, qc = f"rc{uid()}", f"rd{uid()}"
    fp = FlowProducer(redis_url)
    p1 = fp.add({"name": "p", "queue": q, "children": [{"name": "c", "queue": qc}]})
    p2 = fp.add({"name": "p", "queue": q, "children": [{"name": "c", "queue": qc},
                                                          {"name": "c", "queue": qc}]})
    a, c = Queue(q, redis_url), Queue(qc, redis_url)
    c.get_job(p1.children[0].id).remove()
    assert a.get_job(p1.id).state() == "wait"  # no child left to wait for
    assert c.drain() == 2
    assert a.get_job(p2.id).state() == "wait"
    assert a.get_flow(p2.id)["children"] == []
    # Obliterating the parents' queue leaves nothing behind of the flows.
    a.obliterate(force=True)
    c.obliterate(force=True)
    assert all_keys(redis_url) == []
    fp.close()


def test_cleaning_waiting_parents_takes_their_pending_children(redis_url: str) -> None:
    q, qc = f"cl{uid()}", f"cm{uid()}"
    fp = FlowProducer(redis_url)
    fp.add({"name": "p", "queue": q, "children": [
        {"name": "c", "queue": qc, "children": [{"name": "g", "queue": q}]}]})
    a = Queue(q, redis_url)
    assert len(a.clean(0, state="waiting-children")) == 1
    assert [k for k in all_keys(redis_url) if b":job:" in k] == []
    fp.close()


def test_get_flow_of_a_missing_job_is_none_and_depth_limits(redis_url: str) -> None:
    q = f"gf{uid()}"
    fp = FlowProducer(redis_url)
    assert fp.get_flow(q, "nope") is None
    root = fp.add({"name": "a", "queue": q, "children": [
        {"name": "b", "children": [{"name": "c", "children": [{"name": "d"}]}]}]})
    flow = fp.get_flow(q, root.id, depth=2)
    assert flow is not None
    b = flow["children"][0]
    c = b["children"][0]
    assert (b["name"], b["state"], c["name"], c["state"]) == (
        "b", "waiting-children", "c", "waiting-children")
    assert c["children"] == []  # depth 2: c's children are not read
    assert fp.get_flow(q, root.id, max_children=0)["children"] == []
    fp.close()


# -- input --------------------------------------------------------------------------------


def test_bad_input_writes_nothing(redis_url: str) -> None:
    q = f"bi{uid()}"
    fp = FlowProducer(redis_url)
    deep: dict[str, Any] = {"name": "leaf", "data": {"when": object()}}
    cyclic: dict[str, Any] = {"name": "loop", "queue": q, "children": []}
    cyclic["children"].append({"name": "inner", "children": [cyclic]})
    bad = [
        ({"name": "p", "queue": q, "children": [{"name": "c", "opts": {"failure_policy": "x"}}]},
         InvalidOption, "failure_policy must be one of"),
        ({"name": "p", "queue": q, "children": [{"name": "c", "children": [
            {"name": "c2", "children": [deep]}]}]},
         EncodeError, r"root.children\[0\].children\[0\].children\[0\]"),
        (cyclic, InvalidOption, "cycle"),
        ({"name": "p", "queue": q, "opts": {"failure_policy": "ignore"}}, InvalidOption,
         "the root has no parent"),
        ({"name": "p", "queue": q, "opts": {"delay": 5}, "children": [{"name": "c"}]},
         InvalidOption, "cannot be delayed"),
        ({"name": "p", "queue": q, "children": [{"name": "c", "opts": {"dedup": "d"}}]},
         InvalidOption, "dedup"),
        ({"name": "p", "queue": q, "children": [{"name": "c", "opts": {"job_id": "x"}},
                                                {"name": "c", "opts": {"job_id": "x"}}]},
         InvalidOption, "same job id"),
        ({"name": "p", "queue": q, "children": [{"name": "c", "colour": "red"}]},
         InvalidOption, "unknown keys"),
        ({"name": "p"}, InvalidOption, "needs a queue"),
        ({"name": "p", "queue": "bad queue"}, InvalidOption, "must not contain"),
        ({"name": "", "queue": q}, InvalidOption, "name must be"),
        ({"name": "p", "queue": q, "children": [{"name": "c", "opts": {"attempts": 0}}]},
         InvalidOption, "attempts"),
    ]
    for tree, exc, match in bad:
        with pytest.raises(exc, match=match):
            fp.add(tree)
    assert all_keys(redis_url) == []
    fp.close()


def test_existing_custom_ids_root_is_idempotent_others_refused(redis_url: str) -> None:
    q = f"ci{uid()}"
    fp = FlowProducer(redis_url)
    tree = {"name": "p", "queue": q, "opts": {"job_id": "order-1"},
            "children": [{"name": "c"}]}
    first = fp.add(tree)
    again = fp.add(tree)
    assert (first.id, first.duplicated, again.id, again.duplicated) == (
        "order-1", False, "order-1", True)
    before = all_keys(redis_url)
    with pytest.raises(InvalidOption, match="'order-1' already exists"):
        fp.add({"name": "p2", "queue": q, "children": [
            {"name": "c", "opts": {"job_id": "order-1"}}]})
    assert all_keys(redis_url) == before
    assert Queue(q, redis_url).counts()["wait"] == 1
    fp.close()


def test_a_flow_across_queues_is_refused_on_redis_cluster() -> None:
    core = FlowCore("rqsup", cluster=True)
    with pytest.raises(InvalidOption, match="Redis Cluster"):
        core.encode(core.flatten([{"name": "p", "queue": "a", "children": [
            {"name": "c", "queue": "b"}]}], None, False))
    # One queue (one slot) is fine there.
    core.encode(core.flatten([{"name": "p", "queue": "a", "children": [{"name": "c"}]}],
                             None, False))


# -- a supervisor killed while a flow is half done ----------------------------------------


def test_supervisor_killed_mid_flow_then_restarted_completes_it_once(
        tmp_path: Path, redis_url: str) -> None:
    from tests.procs import Supervisor, config_text

    name, qp, qc = f"sup-{uid()}", f"kp{uid()}", f"kc{uid()}"
    startlog = tmp_path / "starts"
    n = 24
    cfg = tmp_path / "s.toml"
    cfg.write_text(config_text(redis_url, name, [
        {"name": qp, "processor": PROCS, "concurrency": 1},
        {"name": qc, "processor": PROCS, "concurrency": 2},
    ], lease="60s", renew_interval="1s", stall_interval="60s"))
    fp = FlowProducer(redis_url)
    leaf = {"sleep": 0.15, "startlog": str(startlog)}
    root = fp.add({"name": "parent", "queue": qp, "data": {"startlog": str(startlog)},
                   "children": [
                       *({"name": "leaf", "queue": qc, "data": {**leaf, "n": i}}
                         for i in range(n)),
                       {"name": "parent", "queue": qc, "data": {"startlog": str(startlog)},
                        "children": [{"name": "leaf", "queue": qp, "data": {**leaf, "n": 100}}]},
                   ]})
    p = Queue(qp, redis_url)
    sups: list[Supervisor] = []
    try:
        sups.append(Supervisor(cfg, tmp_path / "supervisor.log"))
        wait_until(lambda: startlog.exists() and len(startlog.read_text().splitlines()) >= 8,
                   "8 children started", 30)
        sups[0].proc.send_signal(signal.SIGKILL)
        assert sups[0].wait_exit(5) == -signal.SIGKILL
        assert p.get_job(root.id).state() == "waiting-children"
        c = Queue(qc, redis_url)
        left_active = {j.id for j in c.get_jobs("active")}
        assert left_active and 0 < c.counts()["completed"] < n  # half done
        sups.append(Supervisor(cfg, tmp_path / "supervisor.log"))
        sups[1].wait_log(rf"queue {qc}: requeued \d+ job\(s\) left active")
        result = p.wait_for(root.id, 60)
    finally:
        for s in sups:
            s.kill()
    values = result["values"]
    assert len(values) == n + 1
    assert sorted(v for k, v in values.items() if k != f"{qc}:{root.children[-1].id}") == \
        list(range(n))
    assert values[f"{qc}:{root.children[-1].id}"]["values"] == {f"{qp}:2": 100}
    starts = startlog.read_text().splitlines()
    assert starts.count(f"{root.id} parent") == 1  # the parent ran exactly once
    assert p.get_job(root.id).attempts_started == 1
    fp.close()
