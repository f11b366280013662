"""The streaming path of ``Queue.add_bulk`` (issue 14).

The ordinary path packs a pipeline of chunks, sends it, and waits: the
client's packing and Redis's running of the scripts take turns. Here every
chunk (500 jobs, one add.lua call) is packed and written as soon as the one
before it is on its way, and each reply is read while Redis runs the next
chunk, so both sides work at once. Every job is still validated and encoded
before the first byte is written: one bad job refuses the whole batch.

The same conditions as the fast single add apply (a plain client, scripts
loaded, no tracing, no ``wait_replicas``); a ``NOSCRIPT`` reply (after a
Redis restart) sends the chunks that did not run the ordinary way, and a
connection error sends the chunks whose replies were not read the ordinary
way, as redis-py's own one retry would (docs/decisions.md: an auto-id add
repeated after a connection error may add a second job).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from rqsup.queue import connection, fastadd
from rqsup.queue.core import ADD_CHUNK, Added, AddSpec, added_from

if TYPE_CHECKING:
    from rqsup.queue.queue import Queue


def usable(queue: Queue, n: int) -> bool:
    """Worth it (more than one chunk) and nothing unusual (fastadd.usable)."""
    return n > ADD_CHUNK and connection._pack is not None and fastadd.usable(queue, {})


def add_bulk(queue: Queue, specs: list[AddSpec]) -> list[Added]:
    pack = connection._pack
    assert pack is not None
    core = queue.core
    chunks = [specs[i:i + ADD_CHUNK] for i in range(0, len(specs), ADD_CHUNK)]
    #: per chunk: what add.lua did with its jobs, or the error of its call
    done: list[list[Added] | Exception] = []
    pool = queue.client.connection_pool
    conn: Any = pool.get_connection()
    sent = 0

    def take() -> None:
        reply = _read(conn)
        chunk = chunks[len(done)]
        done.append(reply if isinstance(reply, Exception) else added_from(chunk, reply))

    try:
        for chunk in chunks:
            conn.send_packed_command([pack(core.add_args(chunk))], check_health=False)
            sent += 1
            if sent > 1:  # take the one before while Redis runs this one
                take()
        while len(done) < sent:
            take()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        conn.disconnect()
    except BaseException:
        conn.disconnect()  # replies may be unread on it
        pool.release(conn)
        raise
    pool.release(conn)
    out: list[Added] = []
    for i, chunk in enumerate(chunks):
        result = done[i] if i < len(done) else None
        if result is None or isinstance(result, redis.exceptions.NoScriptError):
            # Not run (NOSCRIPT), or its reply is lost: the ordinary path.
            out += queue._driver.drive(core.op_add_jobs(chunk))
        elif isinstance(result, Exception):
            raise result
        else:
            out += result
    return out


def _read(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc  # read in order; judged once every reply is in
