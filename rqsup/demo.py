"""``python -m rqsup.demo``: watch jobs flow through a worker, with nothing set up.

Starts a private redis-server (data under ./var/demo-redis) unless ``--url``
is given, runs an in-process worker with three demo processors (CPU work,
a flaky one that retries, a slow one reporting progress), adds jobs and
prints each event as it happens. The supervisor issue replaces this with
``rqsup start configs/dev.toml``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import time
from typing import Any

from rqsup.queue.aqueue import AsyncQueue
from rqsup.queue.events import QueueEvents
from rqsup.supervisor import ActiveJob, Worker

QUEUE = "demo"


async def demo_processor(job: ActiveJob) -> Any:
    if job.name == "hash":  # CPU work: repeated sha256
        digest = job.data["text"].encode()
        for _ in range(job.data["rounds"]):
            digest = hashlib.sha256(digest).digest()
        return digest.hex()[:16]
    if job.name == "flaky":  # fails on its first attempt, then succeeds
        if job.attempts_made == 0:
            raise ConnectionError("upstream said 503 (demo: fails once)")
        return f"ok on attempt {job.attempts_made + 1}"
    if job.name == "report":  # slow, reports progress
        for step in range(1, 5):
            await asyncio.sleep(0.15)
            job.update_progress(step * 25)
            job.log(f"step {step} of 4")
        return {"pages": 4}
    raise ValueError(f"unknown demo job {job.name!r}")


async def main(url: str, count: int) -> None:
    queue = AsyncQueue(QUEUE, url)
    await queue.obliterate(force=True)
    events = QueueEvents(QUEUE, url, last_id="0")
    worker = Worker(QUEUE, demo_processor, url=url, concurrency=4)
    worker_task = asyncio.create_task(worker.run())
    jobs = []
    for i in range(count):
        kind = ("hash", "flaky", "report")[i % 3]
        data = {"text": f"job {i}", "rounds": 20_000} if kind == "hash" else {"i": i}
        backoff = {"type": "fixed", "delay": 0.2}
        jobs.append(await queue.add(kind, data, attempts=3, backoff=backoff))
    t0 = time.monotonic()
    finished = 0
    async for ev in events:
        extra = {k: v for k, v in ev.fields.items() if k in ("returnvalue", "progress", "reason")}
        elapsed = time.monotonic() - t0
        print(f"{elapsed:6.2f}s  job {ev.job_id or '-':>3}  {ev.name:<9} {extra or ''}")
        if ev.name in ("completed", "failed"):
            finished += 1
            if finished == count:
                break
    counts = await queue.counts()
    print(f"\nall {count} jobs finished in {time.monotonic() - t0:.2f}s: {counts}")
    await events.close()
    await worker.close()
    await worker_task
    await queue.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--jobs", type=int, default=9, help="how many demo jobs (default 9)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.url:
        asyncio.run(main(args.url, args.jobs))
        return
    from rqsup.redis_server import RedisServer

    with RedisServer("var/demo-redis") as server:
        print(f"private redis-server at {server.url}\n")
        asyncio.run(main(server.url, args.jobs))


if __name__ == "__main__":
    cli()
