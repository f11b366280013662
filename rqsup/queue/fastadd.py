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
        # [<reply list>]
        self.head = b"".join(_arg(x) for x in (
            "EVALSHA", SCRIPTS["add"].sha, 1, core.key_list[0], 1, ""))
        self.tail = b"".join(_arg(x) for x in self.shared)
        self.stored_base = {"opts": a[3], "delay": str(a[4]), "priority": str(a[5]),
                            "attempts": str(a[7]), "attempts_made": "0"}

    def _encode(self, name: str, data: Any) -> bytes | None:
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
        return text

    def add(self, queue: Queue, name: str, data: Any) -> Added | None:
        """The add's outcome, or None when the ordinary path must take it
        (nothing was written then)."""
        text = self._encode(name, data)
        if text is None:
            return None
        frame = b"*16\r\n" + self.head + _bulk(name.encode()) + _bulk(text) + self.tail
        pool = queue.client.connection_pool
        conn = pool.get_connection()
        reply = self._send(pool, conn, frame)
        if reply is None:
            return None
        pool.release(conn)
        return self._added(reply, name, text)

    def call(
        self, queue: Queue, name: str, data: Any, reply_to: str, block_s: float
    ) -> tuple[Added, Any] | None:
        """Request/response in one write: the add (with its reply list) and a
        BLPOP on that list, so the wait starts without a round trip in between.
        (the add's outcome, the BLPOP's reply: None when it timed out or its
        connection failed), or None when the ordinary path must take it."""
        text = self._encode(name, data)
        if text is None:
            return None
        rk = _bulk(reply_to.encode())
        frame = (b"*17\r\n" + self.head + _bulk(name.encode()) + _bulk(text) + self.tail + rk
                 + b"*3\r\n$5\r\nBLPOP\r\n" + rk + _arg(f"{block_s:.3f}"))
        pool = queue.client.connection_pool
        conn = pool.get_connection()
        reply = self._send(pool, conn, frame, pending=True)
        if reply is None:
            return None
        added = self._added(reply, name, text)
        try:
            popped = conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()  # type: ignore[no-untyped-call]
            popped = None  # the job is stored: the caller waits the ordinary way
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            pool.release(conn)
            raise
        pool.release(conn)
        return added, popped

    @staticmethod
    def _send(pool: Any, conn: Any, frame: bytes, pending: bool = False) -> Any:
        """Write ``frame`` and read the add's reply; None (the connection given
        back) when the ordinary path must take the add. ``pending``: a reply
        follows the add's (a failed add then drops the connection with it)."""
        try:
            conn.send_packed_command([frame])
            return conn.read_response()
        except redis.ResponseError:
            if pending:  # the BLPOP behind it would block: drop it with the connection
                conn.disconnect()
            pool.release(conn)
            return None  # NOSCRIPT and the like: the ordinary path handles them
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # The reply is lost: drop the connection and let the ordinary path
            # send it again, as redis-py's own one retry would (an auto-id add
            # may then be stored twice; docs/decisions.md).
            conn.disconnect()
            pool.release(conn)
            return None
        except BaseException:
            conn.disconnect()  # it may hold an unread reply
            pool.release(conn)
            raise

    def _added(self, reply: Any, name: str, text: bytes) -> Added:
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
