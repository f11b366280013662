"""A TCP proxy in front of a real redis-server that can lose a reply on purpose.

``drop_reply_containing(marker)`` arms it: the next reply from Redis that
contains ``marker`` is thrown away and both sides of that connection are
closed, exactly what a client sees when a network path dies after Redis ran
the command. Everything else is forwarded untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class LossyProxy:
    def __init__(self, target_url: str) -> None:
        self.target = target_url
        self.port = 0
        self._marker: bytes | None = None
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> LossyProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def drop_reply_containing(self, marker: bytes) -> None:
        self._marker = marker

    @property
    def armed(self) -> bool:
        return self._marker is not None

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), self._loop)
        self._thread.join(5)

    # -- the proxy ---------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target.startswith("unix://"):
            return await asyncio.open_unix_connection(self.target[len("unix://"):])
        host_port = self.target.split("://", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        return await asyncio.open_connection(host, int(port))

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await self._open_target()
        except OSError:
            cw.close()
            return

        async def up() -> None:
            with contextlib.suppress(Exception):
                while data := await cr.read(65536):
                    sw.write(data)
                    await sw.drain()
            sw.close()

        async def down() -> None:
            with contextlib.suppress(Exception):
                while data := await sr.read(65536):
                    if self._marker is not None and self._marker in data:
                        self._marker = None
                        self.dropped += 1
                        break  # the reply is lost with the connection
                    cw.write(data)
                    await cw.drain()
            cw.close()
            sw.close()

        await asyncio.gather(up(), down())
