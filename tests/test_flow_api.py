"""BullMQ's flow API beyond FlowProducer.add (issue 10): a child added to an
existing parent, add_bulk, and a parent's dependency getters, against a real redis."""

from __future__ import annotations

import asyncio

import pytest

from rqsup import AsyncFlowProducer, AsyncQueue, FlowProducer, InvalidOption, Queue
from rqsup.errors import JobNotFound, JobStateError


def claim(q: Queue, n: int = 1000, lease_ms: int = 30_000) -> list[tuple[str, str]]:
    reply = q._driver.execute(q.core.script("claim", n, "w1", lease_ms))
    return [(i.decode(), t.decode()) for i, t, _f in reply[1:]]


def complete(q: Queue, job_id: str, token: str, value: str) -> None:
    reply = q._driver.execute(q.core.script("complete", 1, 0, "w1", 30_000,
                                            job_id, token, value, -1, -1))
    assert int(reply[0][0]) == 0


def test_a_child_added_to_an_existing_parent_is_waited_for(redis_url: str) -> None:
    parents, kids = Queue("par", redis_url), Queue("kid", redis_url)
    fp = FlowProducer(redis_url)
    node = fp.add({"name": "p", "queue": "par", "children": [{"name": "c0", "queue": "kid"}]})
    extra = kids.add("c1", {"n": 1}, parent={"id": node.id, "queue": "par"}, priority=2,
                     job_id="extra")
    assert extra.add_outcome == "created" and extra.priority == 2 and extra.data == {"n": 1}
    assert parents.get_job(node.id).get_dependencies_count() == {  # type: ignore[union-attr]
        "processed": 0, "unprocessed": 2, "failed": 0, "ignored": 0}
    grants = claim(kids)
    assert len(grants) == 2
    complete(kids, *grants[0], '"a"')
    assert parents.get_job(node.id).state() == "waiting-children"  # type: ignore[union-attr]
    complete(kids, *grants[1], '"b"')
    parent = parents.get_job(node.id)
    assert parent is not None and parent.state() == "wait"
    assert sorted(parent.get_children_values().values()) == ["a", "b"]
    # The same custom id again: the stored child comes back, nothing written.
    again = kids.add("c1", job_id=extra.id, parent={"id": node.id, "queue": "par"})
    assert again.add_outcome == "duplicated"
    with pytest.raises(JobNotFound, match="job nope"):
        kids.add("c", parent={"id": "nope", "queue": "par"})
    with pytest.raises(InvalidOption, match="parent must be"):
        kids.add("c", parent="par:1")
    with pytest.raises(InvalidOption, match=r"FlowProducer\.add_bulk"):
        kids.add_bulk([{"name": "c", "opts": {"parent": {"id": node.id, "queue": "par"}}}])
    # A finished parent takes no child.
    lone = parents.add("lone", remove_on_complete=False)
    grants = dict(claim(parents))
    complete(parents, lone.id, grants[lone.id], "1")
    with pytest.raises(JobStateError, match="it is completed"):
        kids.add("late", parent={"id": lone.id, "queue": "par"})
    fp.close()


def test_async_child_of_a_parent_in_the_same_queue(redis_url: str) -> None:
    async def main() -> None:
        q = AsyncQueue("same", redis_url)
        step = await q.add("step")
        child = await q.add("c", parent={"id": step.id})  # queue: the child's own
        assert child.add_outcome == "created"
        assert await step.get_dependencies() == {
            "processed": {}, "unprocessed": [f"same:{child.id}"], "failed": [], "ignored": {}}
        await q.close()

    asyncio.run(main())


def test_flow_producer_add_bulk_is_all_or_none(redis_url: str) -> None:
    q = Queue("bulkf", redis_url)
    fp = FlowProducer(redis_url)
    roots = fp.add_bulk([
        {"name": "a", "queue": "bulkf", "children": [{"name": "a1"}, {"name": "a2"}]},
        {"name": "b", "queue": "bulkf", "opts": {"job_id": "b-root"}},
    ])
    assert [r.name for r in roots] == ["a", "b"] and roots[1].id == "b-root"
    assert sorted(c.name for c in roots[0].children) == ["a1", "a2"]
    before = q.counts()
    with pytest.raises(InvalidOption, match=r"flows\[1\].*b-root.*nothing was added"):
        fp.add_bulk([{"name": "c", "queue": "bulkf"},
                     {"name": "b", "queue": "bulkf", "opts": {"job_id": "b-root"}}])
    assert q.counts() == before
    with pytest.raises(InvalidOption, match="non-empty list"):
        fp.add_bulk([])
    fp.close()

    async def main() -> None:
        afp = AsyncFlowProducer(redis_url)
        [r] = await afp.add_bulk([{"name": "z", "queue": "bulkf"}])
        assert r.name == "z"
        await afp.close()

    asyncio.run(main())


def test_dependencies_page_with_cursors_over_many_children(redis_url: str) -> None:
    q = Queue("deps", redis_url)
    fp = FlowProducer(redis_url)
    # Past the sizes Redis keeps compact and scans in one go: values over 64
    # bytes for the processed hash, over 128 members for the pending set.
    n_children, n_done = 300, 150
    pad = "x" * 80
    node = fp.add({"name": "p", "queue": "deps",
                   "children": [{"name": f"c{i}", "data": i} for i in range(n_children)]})
    grants = claim(q)
    assert len(grants) == n_children
    for jid, tok in grants[:n_done]:
        complete(q, jid, tok, f'"{jid}{pad}"')
    parent = q.get_job(node.id)
    assert parent is not None
    assert parent.get_dependencies_count() == {"processed": n_done,
                                               "unprocessed": n_children - n_done,
                                               "failed": 0, "ignored": 0}
    assert parent.get_dependencies_count(processed=True) == {"processed": n_done}

    seen: dict[str, object] = {}
    cursor, pages = 0, 0
    while True:
        page = parent.get_dependencies(processed={"cursor": cursor, "count": 50})
        assert set(page) == {"processed", "next_processed_cursor"}
        seen.update(page["processed"])
        cursor, pages = page["next_processed_cursor"], pages + 1
        if cursor == 0:
            break
    assert pages > 1 and len(seen) == n_done
    assert seen == {f"deps:{jid}": f"{jid}{pad}" for jid, _ in grants[:n_done]}
    pending: set[str] = set()
    cursor = 0
    while True:
        page = parent.get_dependencies(unprocessed={"cursor": cursor, "count": 25})
        pending.update(page["unprocessed"])
        cursor = page["next_unprocessed_cursor"]
        if cursor == 0:
            break
    assert pending == {f"deps:{jid}" for jid, _ in grants[n_done:]}
    everything = parent.get_dependencies()
    assert len(everything["processed"]) == n_done and len(everything["unprocessed"]) == 150
    assert parent.get_children_values() == seen
    with pytest.raises(InvalidOption, match="count must be an int >= 1"):
        parent.get_dependencies(processed={"cursor": 0, "count": 0})
    fp.close()


def test_remove_unprocessed_children_spares_running_and_finished_ones(redis_url: str) -> None:
    q = Queue("prune", redis_url)
    fp = FlowProducer(redis_url)
    node = fp.add({"name": "p", "queue": "prune", "children": [
        {"name": "run"}, {"name": "done"},
        {"name": "pending", "children": [{"name": "grandchild", "opts": {"delay": 60}}]}]})
    by_name = {c.name: c for c in node.children}
    grants = dict(claim(q, 2))  # run, done (pending waits for its own child)
    assert set(grants) == {by_name["run"].id, by_name["done"].id}
    complete(q, by_name["done"].id, grants[by_name["done"].id], '"ok"')
    parent = q.get_job(node.id)
    assert parent is not None
    assert parent.remove_unprocessed_children() == 1
    assert q.get_job(by_name["pending"].id) is None
    assert q.get_job(by_name["pending"].children[0].id) is None
    assert parent.get_dependencies()["unprocessed"] == [f"prune:{by_name['run'].id}"]
    assert parent.state() == "waiting-children"
    complete(q, by_name["run"].id, grants[by_name["run"].id], '"r"')
    assert parent.state() == "wait"
    parent.remove()
    with pytest.raises(JobNotFound):
        parent.remove_unprocessed_children()
    fp.close()
