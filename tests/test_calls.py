"""Queue.call answers on a reply list (rqsup.queue.calls): every outcome
arrives, missing answers are covered by the job itself, nothing is left
behind, and the ordinary path gives the same results as the fast one."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from rqsup import JobFailed, JobNotFound, Queue
from rqsup.queue import calls
from rqsup.redis_server import RedisServer
from rqsup.supervisor import ActiveJob
from tests.helpers import wait_until
from tests.test_worker import worker_in_thread

pytestmark = pytest.mark.also_on_cluster


async def proc(job: ActiveJob) -> Any:
    if job.data == "boom":
        raise ValueError("boom went the job")
    return {"got": job.data}


def reply_keys(q: Queue) -> list[str]:
    return [k.decode() for k in q.client.scan_iter(match=q.core.keys.reply("*"))]


def test_calls_answer_with_values_and_failures_and_leave_no_reply_list(redis_url: str) -> None:
    with worker_in_thread(redis_url, "c1", proc):
        q = Queue("c1", redis_url)
        assert q.call("x", 1, timeout=10) == {"got": 1}  # the fast path (no options)
        assert q.call("x", [2], timeout=10, attempts=1) == {"got": [2]}  # the ordinary one
        with pytest.raises(JobFailed, match="boom went the job") as info:
            q.call("x", "boom", timeout=10)
        assert info.value.error_type == "ValueError"
        with pytest.raises(JobFailed, match="boom went the job"):
            q.call("x", "boom", timeout=10, remove_on_fail=True)  # answered before deletion
        # remove_on_complete deletes the job as it completes: the answer still comes
        assert q.call("x", 3, timeout=10, remove_on_complete=True) == {"got": 3}
        assert reply_keys(q) == []  # BLPOP took each answer, and the list with it
        q.close()


def test_a_call_that_is_never_answered_times_out_and_a_removed_job_is_named(
    redis_url: str,
) -> None:
    with worker_in_thread(redis_url, "c2", proc):
        q = Queue("c2", redis_url)
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.3s"):
            q.call("x", None, timeout=0.3, delay=3_600_000)
        [delayed] = q.get_jobs("delayed")
        assert delayed.raw.get("reply_to", "").startswith(q.core.keys.reply(""))
        box: list[BaseException] = []

        def caller() -> None:
            try:
                q.call("x", None, timeout=10, delay=3_600_000)
            except BaseException as exc:  # the test looks at it
                box.append(exc)

        t = threading.Thread(target=caller)
        t.start()
        wait_until(lambda: len(q.get_jobs("delayed")) == 2, "the second call's job")
        for job in q.get_jobs("delayed"):
            job.remove()
        t.join(10)  # removal answers nobody: the caller's check of the job sees it gone
        assert not t.is_alive() and isinstance(box[0], JobNotFound)
        q.close()


def test_a_deduplicated_call_waits_for_the_job_that_stands_for_it(redis_url: str) -> None:
    with worker_in_thread(redis_url, "c3", proc):
        q = Queue("c3", redis_url)
        first = q.add("x", "kept", job_id="same")
        assert q.call("x", "ignored", timeout=10, job_id="same") == {"got": "kept"}
        assert first.wait(timeout=5) == {"got": "kept"}
        q.close()


def test_an_unreadable_answer_falls_back_to_the_job_itself(redis_url: str) -> None:
    assert calls.outcome_from_reply([b"k", b"not json"]) is None
    assert calls.outcome_from_reply([b"k", b'["1", true, "5", "", "", ""]']) == ("completed", 5)
    kind, err = calls.outcome_from_reply([b"k", b'["1", false, "null", "E", "why", ""]'])
    assert kind == "failed" and isinstance(err, JobFailed) and err.stacktrace is None


@pytest.mark.single_only("a private redis-server that is flushed and restarted")
def test_fast_calls_survive_noscript_and_a_redis_restart(private_redis: RedisServer) -> None:
    with worker_in_thread(private_redis.url, "c4", proc):
        q = Queue("c4", private_redis.url)
        assert q.call("x", 1, timeout=10) == {"got": 1}  # loads the scripts
        assert q.call("x", 2, timeout=10) == {"got": 2}
        assert q._fast is not None  # that one took the pipelined path
        redis.Redis.from_url(private_redis.url).script_flush()
        assert q.call("x", 3, timeout=10) == {"got": 3}  # NOSCRIPT: the ordinary path
        private_redis.restart()  # the pooled connections are dead now
        assert q.call("x", 4, timeout=20) == {"got": 4}
        assert q.call("x", 5, timeout=10) == {"got": 5}
        assert q.counts()["completed"] == 5
        q.close()
