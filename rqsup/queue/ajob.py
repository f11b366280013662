"""A job of an :class:`rqsup.AsyncQueue`: :class:`AsyncJob` (see :class:`rqsup.Job`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rqsup.queue import codec
from rqsup.queue.record import JobRecord

if TYPE_CHECKING:
    from rqsup.queue.aqueue import AsyncQueue


@dataclass(repr=False)
class AsyncJob(JobRecord):
    """A job of an :class:`AsyncQueue`; see :class:`rqsup.Job`."""

    queue: AsyncQueue = field(default=None)  # type: ignore[assignment]
    added_event: str = ""
    add_outcome: str = ""

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, name={self.name!r}, queue={self.queue.name!r})"

    @property
    def deduplicated(self) -> bool:
        return self.add_outcome in ("deduplicated", "debounced")

    async def remove_dedup_key(self) -> bool:
        dedup_id = self.dedup_id
        if dedup_id is None:
            return False
        return await self.queue._driver.drive(
            self.queue.core.op_remove_dedup_key(dedup_id, self.id))

    async def refresh(self) -> AsyncJob:
        rec = await self.queue._driver.drive(self.queue.core.op_require_record(self.id))
        self.raw = rec.raw
        return self

    async def state(self) -> str:
        return await self.queue._driver.drive(self.queue.core.op_state(self.id))

    async def wait(self, timeout: float | None = None) -> Any:
        return await self.queue.wait_for(self.id, timeout)

    async def logs(self, start: int = 0, end: int = -1) -> list[str]:
        return await self.queue._driver.drive(self.queue.core.op_logs(self.id, start, end))

    async def change_delay(self, delay: float) -> None:
        await self.queue._driver.drive(self.queue.core.op_change_delay(self.id, delay))

    async def change_priority(self, priority: int, lifo: bool = False) -> None:
        await self.queue._driver.drive(self.queue.core.op_change_priority(self.id, priority, lifo))

    async def promote(self) -> None:
        await self.queue._driver.drive(self.queue.core.op_promote(self.id))

    async def retry(self, state: str = "failed", *, reset_attempts_made: bool = False,
                    reset_attempts_started: bool = False) -> None:
        await self.queue._driver.drive(self.queue.core.op_retry(
            self.id, state, reset_attempts_made, reset_attempts_started))

    async def remove(self) -> None:
        await self.queue._driver.drive(self.queue.core.op_remove(self.id))

    async def get_children_values(self) -> dict[str, Any]:
        return await self.queue._driver.drive(self.queue.core.op_children_values(self.id))

    async def get_failed_children_values(self) -> dict[str, str]:
        return await self.queue._driver.drive(self.queue.core.op_failed_children(self.id))

    async def get_ignored_children_failures(self) -> dict[str, str]:
        return await self.queue._driver.drive(self.queue.core.op_ignored_failures(self.id))

    async def get_dependencies(self, *, processed: Any = None, unprocessed: Any = None,
                               failed: Any = None, ignored: Any = None) -> dict[str, Any]:
        asked = {"processed": processed, "unprocessed": unprocessed, "failed": failed,
                 "ignored": ignored}
        return await self.queue._driver.drive(self.queue.core.op_dependencies(self.id, asked))

    async def get_dependencies_count(self, *, processed: bool = False,
                                     unprocessed: bool = False, failed: bool = False,
                                     ignored: bool = False) -> dict[str, int]:
        kinds = [k for k, on in (("processed", processed), ("unprocessed", unprocessed),
                                 ("failed", failed), ("ignored", ignored)) if on]
        return await self.queue._driver.drive(self.queue.core.op_dependencies_count(self.id, kinds))

    async def remove_unprocessed_children(self) -> int:
        op = self.queue.core.op_remove_unprocessed_children(self.id)
        return await self.queue._driver.drive(op)

    async def update_data(self, data: Any) -> None:
        await self.queue._driver.drive(self.queue.core.op_update_data(self.id, data))
        self.raw = {**self.raw, "data": codec.encode(data, "data")}
