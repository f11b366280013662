"""A job of a :class:`rqsup.Queue`, as read or just added: :class:`Job`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rqsup.queue import codec
from rqsup.queue.record import JobRecord

if TYPE_CHECKING:
    from rqsup.queue.queue import Queue


@dataclass(repr=False)
class Job(JobRecord):
    """A job as read (or just added); methods act on it in Redis."""

    queue: Queue = field(default=None)  # type: ignore[assignment]
    added_event: str = ""
    #: For a job returned by add: created, duplicated (its custom id existed),
    #: deduplicated or debounced (the kept job of its dedup id); else "".
    add_outcome: str = ""

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, name={self.name!r}, queue={self.queue.name!r})"

    @property
    def deduplicated(self) -> bool:
        """This add created nothing: the job is the one holding its dedup id
        (debounced: it now has this add's data and due time)."""
        return self.add_outcome in ("deduplicated", "debounced")

    def remove_dedup_key(self) -> bool:
        """Release this job's deduplication id, if the job still holds it."""
        dedup_id = self.dedup_id
        if dedup_id is None:
            return False
        return self.queue._driver.drive(self.queue.core.op_remove_dedup_key(dedup_id, self.id))

    def refresh(self) -> Job:
        rec = self.queue._driver.drive(self.queue.core.op_require_record(self.id))
        self.raw = rec.raw
        return self

    def state(self) -> str:
        return self.queue._driver.drive(self.queue.core.op_state(self.id))

    def wait(self, timeout: float | None = None) -> Any:
        return self.queue.wait_for(self.id, timeout)

    def logs(self, start: int = 0, end: int = -1) -> list[str]:
        return self.queue._driver.drive(self.queue.core.op_logs(self.id, start, end))

    def change_delay(self, delay: float) -> None:
        self.queue._driver.drive(self.queue.core.op_change_delay(self.id, delay))

    def change_priority(self, priority: int, lifo: bool = False) -> None:
        self.queue._driver.drive(self.queue.core.op_change_priority(self.id, priority, lifo))

    def promote(self) -> None:
        self.queue._driver.drive(self.queue.core.op_promote(self.id))

    def retry(self, state: str = "failed", *, reset_attempts_made: bool = False,
              reset_attempts_started: bool = False) -> None:
        """Move this finished job (``state``: failed or completed) back to
        wait. As BullMQ, its attempt counters are kept unless reset."""
        self.queue._driver.drive(self.queue.core.op_retry(
            self.id, state, reset_attempts_made, reset_attempts_started))

    def remove(self) -> None:
        self.queue._driver.drive(self.queue.core.op_remove(self.id))

    def get_children_values(self) -> dict[str, Any]:
        """Return values of the finished children, by ``"<queue>:<id>"``."""
        return self.queue._driver.drive(self.queue.core.op_children_values(self.id))

    def get_failed_children_values(self) -> dict[str, str]:
        """Failed reasons of the children that failed it (policy fail or continue)."""
        return self.queue._driver.drive(self.queue.core.op_failed_children(self.id))

    def get_ignored_children_failures(self) -> dict[str, str]:
        """Failed reasons of the children with failure policy ignore."""
        return self.queue._driver.drive(self.queue.core.op_ignored_failures(self.id))

    def get_dependencies(self, *, processed: Any = None, unprocessed: Any = None,
                         failed: Any = None, ignored: Any = None) -> dict[str, Any]:
        """BullMQ's getDependencies: each kind True or ``{"cursor", "count"}``
        for one page of it and ``next_<kind>_cursor``; none: all, whole."""
        asked = {"processed": processed, "unprocessed": unprocessed, "failed": failed,
                 "ignored": ignored}
        return self.queue._driver.drive(self.queue.core.op_dependencies(self.id, asked))

    def get_dependencies_count(self, *, processed: bool = False, unprocessed: bool = False,
                               failed: bool = False, ignored: bool = False) -> dict[str, int]:
        """How many dependencies of the kinds named (all kinds when none is)."""
        kinds = [k for k, on in (("processed", processed), ("unprocessed", unprocessed),
                                 ("failed", failed), ("ignored", ignored)) if on]
        return self.queue._driver.drive(self.queue.core.op_dependencies_count(self.id, kinds))

    def remove_unprocessed_children(self) -> int:
        """Delete the children that have not finished and are not running."""
        return self.queue._driver.drive(self.queue.core.op_remove_unprocessed_children(self.id))

    def update_data(self, data: Any) -> None:
        self.queue._driver.drive(self.queue.core.op_update_data(self.id, data))
        self.raw = {**self.raw, "data": codec.encode(data, "data")}
