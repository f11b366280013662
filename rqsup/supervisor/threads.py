"""A thread pool that can abandon a thread.

Python cannot stop a thread. When a thread-mode job times out or loses its
lease, the worker abandons it: its result is discarded, and the pool starts
another thread so the slot is usable at once. The abandoned thread ends
when its processor returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rqsup.threads")

#: An idle thread exits after this long.
IDLE_EXIT_S = 60.0

_Item = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class ThreadRunner:
    def __init__(self, name: str) -> None:
        self.name = name
        self._items: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        # An abandoned job's thread may fail after nobody waits for it: mark its
        # error retrieved, or asyncio logs "exception was never retrieved".
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._items.put((fn, args, fut, loop))
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                return fut
            self._count += 1
            n = self._count
        threading.Thread(target=self._loop, name=f"rqsup {self.name} #{n}", daemon=True).start()
        return fut

    def _loop(self) -> None:
        while True:
            try:
                item = self._items.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        self._count -= 1
                        return
                continue
            if item is None:
                with self._lock:
                    self._count -= 1
                return
            fn, args, fut, loop = item
            try:
                result = fn(*args)
                ok, value = True, result
            except BaseException as exc:
                ok, value = False, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: the worker is gone
                loop.call_soon_threadsafe(_deliver, fut, ok, value)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Ask idle threads to exit; busy (abandoned) ones exit when their job returns."""
        with self._lock:
            n = self._count
        for _ in range(n):
            self._items.put(None)
