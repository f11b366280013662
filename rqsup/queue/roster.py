"""Who serves a queue: heartbeats listed in a roster, read by ``get_workers``.

A supervisor's heartbeat (rqsup.supervisor.identity) and a standalone
Worker's each hold JSON with a TTL; beside each write the writer adds its
key to the roster ZSET (``rqsup.keys.roster_key``) with the time it expires.
Readers take the roster's members that have not expired long ago and GET
their heartbeats: an expired heartbeat reads as nothing, so the key's TTL,
not a clock, decides who is alive. Never CLIENT LIST: managed Redis services
refuse it, and it names connections, not workers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rqsup.keys import roster_key
from rqsup.queue import codec
from rqsup.queue.scripts import Batch, Command, Op

#: Roster members whose heartbeat expired longer ago than this are pruned.
PRUNE_AFTER_MS = 3_600_000
#: At most this many heartbeats are read per call.
MAX_LISTED = 10_000


def beat_requests(prefix: str, key: str, ttl_ms: int) -> list[Command]:
    """What a heartbeat writer sends beside its own write: the roster entry
    and pruning of long-expired entries."""
    now = int(time.time() * 1000)
    member = key[len(prefix) + 1:]
    roster = roster_key(prefix)
    return [Command(("ZADD", roster, now + ttl_ms, member)),
            Command(("ZREMRANGEBYSCORE", roster, "-inf", now - PRUNE_AFTER_MS))]


def op_heartbeats(prefix: str) -> Op[list[dict[str, Any]]]:
    """Every live heartbeat under ``prefix`` (decoded JSON), oldest start first."""
    now = int(time.time() * 1000)
    members = yield Command(("ZRANGEBYSCORE", roster_key(prefix), now - 60_000, "+inf",
                             "LIMIT", 0, MAX_LISTED))
    if not members:
        return []
    values = yield Batch([Command(("GET", f"{prefix}:{codec.text(m)}")) for m in members])
    out = []
    for raw in values:
        if raw is None:
            continue  # expired: not alive
        try:
            info = json.loads(raw)
        except ValueError:
            continue
        if isinstance(info, dict):
            out.append(info)
    out.sort(key=lambda i: (i.get("started_at") or 0, str(i.get("name"))))
    return out


def workers_of(heartbeats: list[dict[str, Any]], queue: str) -> list[dict[str, Any]]:
    """Those heartbeats that serve ``queue``, as get_workers gives them: name,
    kind (supervisor or worker), host, pid, version, started_at, mode,
    concurrency, running (count) and jobs (the ids it runs)."""
    out = []
    for hb in heartbeats:
        for q in hb.get("queues") or []:
            if not isinstance(q, dict) or q.get("name") != queue:
                continue
            out.append({"name": hb.get("name"), "kind": hb.get("kind", "supervisor"),
                        "host": hb.get("host"), "pid": hb.get("pid"),
                        "version": hb.get("version"), "started_at": hb.get("started_at"),
                        "heartbeat_at": hb.get("at"), "mode": q.get("mode"),
                        "concurrency": q.get("concurrency"), "running": q.get("running", 0),
                        "jobs": list(q.get("jobs") or [])})
    return out


def discover_queues(client: Any, prefix: str) -> list[str]:
    """Every queue under ``prefix`` that has a meta hash (any add made one)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    head, tail = len(prefix) + 2, len("}:meta")  # "<prefix>:{" ... "}:meta"
    found = set()
    for key in client.scan_iter(match=escaped + ":{*}:meta", count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        name = text[head:-tail]
        if name and "{" not in name and "}" not in name:
            found.add(name)
    return sorted(found)
