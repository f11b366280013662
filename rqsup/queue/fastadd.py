"""The fast path of ``Queue.add(name, data)`` with no options (issue 14).

A single add spent most of its client time outside Redis: validating the
same default options again, encoding them, and redis-py's generic command
path (retry wrapper, per-argument encoding, packing, response parsing
layers). An add with no options is the common case, so for it the call is
packed once per queue: the EVALSHA, the script's SHA, the queue's key and
every option argument are bytes ready to send; an add only encodes its
name and data and writes the whole frame on a pooled connection.

Anything unusual goes the ordinary way, which gives the same result:
options, tracing, ``wait_replicas``, a Cluster client, scripts not loaded
yet, a ``NOSCRIPT`` reply (after a Redis restart) or a connection error
(the ordinary path reconnects and retries as it always does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import redis

from rqsup.errors import EncodeError
from rqsup.queue import codec, tracehook
from rqsup.queue.core import ADD_OUTCOMES, Added
from rqsup.queue.record import fields_of
from rqsup.queue.scripts import SCRIPTS

if TYPE_CHECKING:
    from rqsup.queue.queue import Queue

def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _arg(v: Any) -> bytes:
    return _bulk(v if isinstance(v, bytes) else str(v).encode())


class FastAdd:
    """Packs and sends ``add`` calls with the queue's default options."""

    def __init__(self, queue: Queue) -> None:
        core = queue.core
        spec = core.spec("-", None, {})  # the defaults, validated and encoded once
        a = spec.args  # (id, name, data, opts, delay, priority, lifo, attempts, dedup ...)
        self.shared = a[3:]
        self.max_data = core.max_data_bytes
        # EVALSHA sha 1 <base> <N=1> <custom id ''> <name> <data> <8 option args>
        self.head = b"*16\r\n" + b"".join(_arg(x) for x in (
            "EVALSHA", SCRIPTS["add"].sha, 1, core.key_list[0], 1, ""))
        self.tail = b"".join(_arg(x) for x in self.shared)
        self.stored_base = {"opts": a[3], "delay": str(a[4]), "priority": str(a[5]),
                            "attempts": str(a[7]), "attempts_made": "0"}

    def add(self, queue: Queue, name: str, data: Any) -> Added | None:
        """The add's outcome, or None when the ordinary path must take it
        (nothing was written then)."""
        if not isinstance(name, str) or not name:
            return None  # the ordinary path names the problem
        try:
            text = codec.dumps(data)
        except (TypeError, orjson.JSONEncodeError):
            return None  # the ordinary path raises EncodeError naming the job
        if len(text) > self.max_data:
            raise EncodeError(f"data of job {name!r} is {len(text)} bytes of JSON, over the "
                              f"limit of {self.max_data} (max_data_bytes): store it "
                              "elsewhere and pass a reference")
        frame = self.head + _bulk(name.encode()) + _bulk(text) + self.tail
        pool = queue.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([frame])  # type: ignore[no-untyped-call]
            reply = conn.read_response()
        except redis.ResponseError:
            pool.release(conn)
            return None  # NOSCRIPT and the like: the ordinary path handles them
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # The reply is lost: drop the connection and let the ordinary path
            # send it again, as redis-py's own one retry would (an auto-id add
            # may then be stored twice; docs/decisions.md).
            conn.disconnect()  # type: ignore[no-untyped-call]
            pool.release(conn)
            return None
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # it may hold an unread reply
            pool.release(conn)
            raise
        pool.release(conn)
        entry = reply[0]
        outcome = ADD_OUTCOMES[int(entry[1])]
        if outcome == "created":
            fields = {"name": name, "data": text.decode(), "timestamp": str(int(entry[3])),
                      **self.stored_base}
        else:
            fields = fields_of(entry[3])
        return Added(codec.text(entry[0]), outcome, codec.text(entry[2]), fields)


def usable(queue: Queue, options: dict[str, Any]) -> bool:
    """The fast path applies: no options, a plain client, nothing to trace."""
    d = queue._driver
    return (not options and d.loaded and d.wait_replicas == 0 and d.closed_by is None
            and type(queue.client) is redis.Redis and tracehook.tracing() is None)
