"""A partitioned queue: one logical queue over N hash tags, for a Cluster.

``Queue("emails", partitions=16)`` keeps its jobs in 16 ordinary queues
named ``emails#0`` .. ``emails#15`` (keys under ``{emails#0}`` ..
``{emails#15}``), so a Redis Cluster spreads them over its shards. Each
partition is a full queue with its own scripts, leases and events; this
class routes and aggregates:

- an add goes to the next partition in turn, to ``crc32(partition_key) % N``
  when the add names one (related jobs keep their order), or to
  ``crc32(job_id) % N`` for a custom id (so the id finds its partition);
- an auto id is ``<n>#<partition>``: unique over the queue, and it names its
  partition;
- counts, getters, pause, resume, drain, clean, retry, promote and obliterate
  act on every partition; priorities and FIFO hold within a partition;
- ``set_global_concurrency(n)`` and ``set_rate_limit(max, d)`` split the
  value into per-partition budgets that sum to it (docs/cluster.md says
  exactly what that guarantees).

Supervisors consume one with ``partitions = N`` in the ``[[queues]]`` entry.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rqsup.errors import InvalidOption
from rqsup.keys import validate_name
from rqsup.queue.job import Job

if TYPE_CHECKING:
    from rqsup.queue.core import AddSpec
    from rqsup.queue.queue import Queue

MAX_PARTITIONS = 1024
_AUTO_ID = re.compile(r"^\d+#(\d+)$")


def partition_names(name: str, partitions: int) -> list[str]:
    return [f"{name}#{i}" for i in range(partitions)]


def check_partitions(partitions: Any) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int) or \
            not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidOption(f"partitions must be an integer from 1 to {MAX_PARTITIONS}, "
                            f"got {partitions!r}")
    return partitions


def make_parts(cls: Any, name: str, partitions: int, client: Any, own: bool,
               kwargs: dict[str, Any]) -> list[Any]:
    """The partitions' queues (``cls``: Queue or AsyncQueue) on one shared
    client; when the caller made the client, the last one to close releases it."""
    validate_name("queue name", name)
    parts = [cls(n, connection=client, **kwargs) for n in partition_names(name, partitions)]
    for p in parts:
        p._own_client = False
    parts[-1]._own_client = own
    return parts


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers that sum to it, the larger ones first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def slot_of(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


def auto_ids(specs: list[AddSpec], i: int) -> list[AddSpec]:
    """Jobs without a custom id get partition ``i``'s auto id (add.lua makes
    '<next id>#<i>' of '#<i>')."""
    for s in specs:
        if not s.args[0]:
            s.args = (f"#{i}", *s.args[1:])
    return specs


def group_bulk(items: list[Any], pick: Callable[[dict[str, Any]], int]
               ) -> dict[int, list[tuple[int, Any]]]:
    """A bulk add's jobs by partition, each with its position and its
    ``partition_key`` taken out of its options."""
    groups: dict[int, list[tuple[int, Any]]] = {}
    for pos, item in enumerate(items):
        if isinstance(item, Mapping):
            opts = dict(item.get("opts") or {})
            i = pick(opts)
            item = {**item, "opts": opts}
        else:
            opts = dict(item[2]) if len(item) > 2 and item[2] else {}
            i = pick(opts)
            item = (item[0], item[1] if len(item) > 1 else None, opts)
        groups.setdefault(i, []).append((pos, item))
    return groups


class Router:
    """Which partition an add goes to and where an id lives (shared by the
    sync and the asyncio partitioned queue)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._turn = itertools.cycle(range(partitions))

    def _pick(self, options: dict[str, Any]) -> int:
        key = options.pop("partition_key", None)
        if key is not None:
            if not isinstance(key, str) or not key:
                raise InvalidOption(f"partition_key must be a non-empty string, got {key!r}")
            return slot_of(key, self.partitions)
        job_id = options.get("job_id")
        if isinstance(job_id, str) and job_id:
            return slot_of(job_id, self.partitions)
        return next(self._turn)

    def _named(self, job_id: str) -> int | None:
        """The partition an id names (auto ids), or None."""
        m = _AUTO_ID.match(job_id)
        return int(m.group(1)) if m and int(m.group(1)) < self.partitions else None

    def _check_budget(self, what: str, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and value < self.partitions:
            raise InvalidOption(f"{what} {value} is less than the queue's {self.partitions} "
                                "partitions: each partition's budget must be at least 1")

    def _unsupported(self, name: str, attr: str, has: bool) -> Exception:
        if has and not attr.startswith("_"):
            return InvalidOption(
                f"{attr} is not available on a partitioned queue yet (queue {name!r}, "
                f"{self.partitions} partitions); use one partition's queue: queue.parts[i]")
        return AttributeError(attr)


class PartitionedQueue(Router):
    """The producer side of a partitioned queue (see the module docstring)."""

    def __init__(self, parts: list[Queue]) -> None:
        super().__init__(len(parts))
        self.parts = parts
        self.name = parts[0].name.rpartition("#")[0]

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, partitions={len(self.parts)})"

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def __enter__(self) -> PartitionedQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing ------------------------------------------------------------------

    def partition_of(self, job_id: str) -> Queue | None:
        """The partition an id lives in when the id says so (auto ids)."""
        i = self._named(job_id)
        return None if i is None else self.parts[i]

    def _owner(self, job_id: str) -> Queue | None:
        part = self.partition_of(job_id)
        if part is not None:
            return part
        # A custom id: its hash, unless a partition_key put it elsewhere.
        first = self.parts[slot_of(job_id, len(self.parts))]
        if first.get_job(job_id) is not None:
            return first
        return next((p for p in self.parts if p is not first and p.get_job(job_id)), None)

    def _owner_or_first(self, job_id: str) -> Queue:
        return self._owner(job_id) or self.parts[slot_of(job_id, len(self.parts))]

    # -- producing ------------------------------------------------------------------

    def add(self, name: str, data: Any = None, **options: Any) -> Job:
        """As :meth:`Queue.add`, plus ``partition_key``."""
        i = self._pick(options)
        part = self.parts[i]
        if options.get("parent") is not None:
            return part.add(name, data, **options)
        [spec] = auto_ids([part.core.spec(name, data, options)], i)
        [added] = part._driver.drive(part.core.op_add_jobs([spec]))
        return part._job_from_added(added)

    def add_bulk(self, jobs: Iterable[Any]) -> list[Job]:
        """As :meth:`Queue.add_bulk` (``opts`` may hold ``partition_key``): one
        call per partition that gets jobs; the jobs come back in order."""
        items = list(jobs)
        out: list[Job | None] = [None] * len(items)
        for i, group in group_bulk(items, self._pick).items():
            part = self.parts[i]
            specs = auto_ids(part.core.specs_from_bulk([it for _p, it in group]), i)
            added = part._driver.drive(part.core.op_add_jobs(specs))
            for (pos, _it), a in zip(group, added, strict=True):
                out[pos] = part._job_from_added(a)
        return [j for j in out if j is not None]

    def call(self, name: str, data: Any = None, timeout: float | None = 30.0,
             **options: Any) -> Any:
        if "job_timeout" in options:
            options["timeout"] = options.pop("job_timeout")
        job = self.add(name, data, **options)
        return job.queue.wait_for(job.id, timeout, job.added_event or None)

    def wait_for(self, job_id: str, timeout: float | None = None) -> Any:
        return self._owner_or_first(job_id).wait_for(job_id, timeout)

    # -- reading --------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        part = self._owner(job_id)
        return None if part is None else part.get_job(job_id)

    def get_job_state(self, job_id: str) -> str:
        part = self._owner(job_id)
        return "unknown" if part is None else part.get_job_state(job_id)

    def get_jobs(self, state: str | Iterable[str], start: int = 0, end: int = -1,
                 asc: bool = False) -> list[Job]:
        """The partitions' jobs merged by time (newest first, or oldest with
        ``asc``), positions ``start`` to ``end`` of the merged list."""
        jobs = [j for p in self.parts for j in p.get_jobs(state, 0, end, asc)]
        jobs.sort(key=lambda j: (j.timestamp_ms or 0), reverse=not asc)
        return jobs[start:] if end < 0 else jobs[start:end + 1]

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.parts:
            for state, n in p.counts().items():
                total[state] = total.get(state, 0) + n
        return total

    def get_job_counts(self, *states: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.parts:
            for state, n in p.get_job_counts(*states).items():
                total[state] = total.get(state, 0) + n
        return total

    def is_paused(self) -> bool:
        return all(p.is_paused() for p in self.parts)

    def limits(self) -> dict[str, Any]:
        """Each partition's limits, and their sums."""
        each = [p.limits() for p in self.parts]
        return {"partitions": each}

    # -- acting on every partition --------------------------------------------------

    def cancel(self, job_id: str, reason: str | None = None) -> str:
        return self._owner_or_first(job_id).cancel(job_id, reason)

    def remove(self, job_id: str) -> None:
        self._owner_or_first(job_id).remove(job_id)

    def pause(self) -> None:
        for p in self.parts:
            p.pause()

    def resume(self) -> None:
        for p in self.parts:
            p.resume()

    def drain(self, delayed: bool = False) -> int:
        return sum(p.drain(delayed) for p in self.parts)

    def clean(self, grace: float, limit: int = 1000, state: str = "completed") -> list[str]:
        out: list[str] = []
        for p in self.parts:
            if len(out) < limit:
                out += p.clean(grace, limit - len(out), state)
        return out

    def obliterate(self, force: bool = False) -> None:
        for p in self.parts:
            p.obliterate(force)

    def retry_jobs(self, state: str = "failed", count: int | None = None) -> int:
        return sum(p.retry_jobs(state, count) for p in self.parts)

    def promote_jobs(self, count: int | None = None) -> int:
        return sum(p.promote_jobs(count) for p in self.parts)

    def set_global_concurrency(self, limit: int | None) -> list[dict[str, Any]]:
        """``limit`` jobs at once over the whole queue: per-partition caps that
        sum to it (each partition needs at least one)."""
        if limit is None:
            return [p.set_global_concurrency(None) for p in self.parts]
        self._check_budget("global_concurrency", limit)
        return [p.set_global_concurrency(n) for p, n in zip(self.parts,
                                                            split(limit, len(self.parts)),
                                                            strict=True)]

    def set_rate_limit(self, max_jobs: int, duration: float) -> list[dict[str, Any]]:
        """``max_jobs`` per ``duration`` over the whole queue, as per-partition
        budgets that sum to it."""
        self._check_budget("rate limit max", max_jobs)
        return [p.set_rate_limit(n, duration) for p, n in zip(self.parts,
                                                              split(max_jobs, len(self.parts)),
                                                              strict=True)]

    def __getattr__(self, attr: str) -> Any:
        if attr in ("parts", "name"):
            raise AttributeError(attr)
        raise self._unsupported(self.name, attr, hasattr(self.parts[0], attr))
