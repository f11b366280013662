"""A job as read from its Redis hash, decoded lazily.

Decoding is lazy so that one malformed job (a hand-edited hash, a writer of
another version) cannot break a listing: only touching the broken field
raises :class:`MalformedJob`, naming the job and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rqsup.errors import MalformedJob
from rqsup.queue import codec
from rqsup.queue.options import JobOptions

_INT_FIELDS = (
    "timestamp", "delay", "priority", "attempts", "attempts_made", "attempts_started",
    "stalled_count", "processed_on", "finished_on",
)


def fields_of(reply: Mapping[Any, Any] | Sequence[Any]) -> dict[str, str]:
    """A hash reply (dict from HGETALL or a flat list from Lua) as str -> str."""
    if isinstance(reply, Mapping):
        return {codec.text(k): codec.text(v) for k, v in reply.items()}
    it = iter(reply)
    try:  # the usual case, bytes from Redis: decode directly (a claim's hot path)
        return {k.decode(): v.decode() for k, v in zip(it, it, strict=True)}
    except (AttributeError, UnicodeDecodeError):
        it = iter(reply)
        return {codec.text(k): codec.text(v) for k, v in zip(it, it, strict=True)}


@dataclass
class JobRecord:
    id: str
    raw: dict[str, str] = field(repr=False)
    #: Why the job's key could not be read as a job at all (None: it could).
    broken: str | None = field(default=None, repr=False, kw_only=True)

    def problems(self) -> list[str]:
        """What is wrong with this job as stored (empty: nothing): for people
        looking at a damaged job, next to whatever could be read."""
        if self.broken:
            return [self.broken]
        out = []
        if not self.raw.get("name"):
            out.append("field 'name' is missing")
        for name in _INT_FIELDS:
            try:
                self._int(name)
            except MalformedJob as exc:
                out.append(exc.detail)
        for name in ("data", "opts", "progress", "returnvalue"):
            try:
                self._json(name)
            except MalformedJob as exc:
                out.append(exc.detail)
        if not out:
            try:
                self.options  # noqa: B018  (decoding checks the option types)
            except MalformedJob as exc:
                out.append(exc.detail)
        return out

    def _int(self, name: str) -> int:
        value = self.raw.get(name)
        if value is None or value == "":
            return 0
        try:
            return int(value)
        except ValueError:
            detail = f"field {name!r} is not an integer: {value[:40]!r}"
            raise MalformedJob(self.id, detail) from None

    def _json(self, name: str, *, required: bool = False) -> Any:
        value = self.raw.get(name)
        if value is None or value == "":
            if required:
                raise MalformedJob(self.id, f"field {name!r} is missing")
            return None
        try:
            return codec.decode(value)
        except ValueError:
            detail = f"field {name!r} is not valid JSON: {value[:40]!r}"
            raise MalformedJob(self.id, detail) from None

    def validate(self) -> None:
        """Raise MalformedJob when the hash lacks what a worker needs to run it."""
        if not self.raw.get("name"):
            raise MalformedJob(self.id, "field 'name' is missing")
        self._json("data", required=True)
        opts = self._json("opts")
        if opts is not None and not isinstance(opts, dict):
            raise MalformedJob(self.id, "field 'opts' is not a JSON object")
        for name in _INT_FIELDS:
            self._int(name)

    @property
    def name(self) -> str:
        return self.raw.get("name", "")

    @property
    def data(self) -> Any:
        return self._json("data", required=True)

    @property
    def options(self) -> JobOptions:
        return self.options_over({})

    def options_over(self, defaults: Mapping[str, Any]) -> JobOptions:
        """The job's stored options over ``defaults`` (stored form: a queue's
        defaults from the config fill what the job did not set)."""
        opts = self._json("opts")
        if opts is None:
            opts = {}
        if not isinstance(opts, dict):
            raise MalformedJob(self.id, "field 'opts' is not a JSON object")
        try:
            return JobOptions.from_stored({**defaults, **opts} if defaults else opts)
        except (TypeError, ValueError) as exc:
            raise MalformedJob(self.id, f"field 'opts': {exc}") from None

    @property
    def timestamp_ms(self) -> int:
        return self._int("timestamp")

    @property
    def delay_ms(self) -> int:
        return self._int("delay")

    @property
    def priority(self) -> int:
        return self._int("priority")

    @property
    def attempts(self) -> int:
        return self._int("attempts") or 1

    @property
    def attempts_made(self) -> int:
        return self._int("attempts_made")

    @property
    def attempts_started(self) -> int:
        return self._int("attempts_started")

    @property
    def stalled_count(self) -> int:
        return self._int("stalled_count")

    @property
    def progress(self) -> Any:
        return self._json("progress")

    @property
    def return_value(self) -> Any:
        return self._json("returnvalue")

    @property
    def failed_reason(self) -> str | None:
        return self.raw.get("failed_reason") or None

    @property
    def error_type(self) -> str | None:
        return self.raw.get("error_type") or None

    @property
    def stacktrace(self) -> str | None:
        return self.raw.get("stacktrace") or None

    @property
    def processed_on_ms(self) -> int | None:
        return self._int("processed_on") or None

    @property
    def finished_on_ms(self) -> int | None:
        return self._int("finished_on") or None

    @property
    def worker(self) -> str | None:
        return self.raw.get("worker") or None

    @property
    def lease(self) -> dict[str, Any]:
        """Stall forensics: who held the latest lease (worker id, the pid that
        ran the job as of the last renewal), when it started and was last
        renewed, and how many times and when the job stalled. Times in ms."""
        def num(field: str) -> int | None:
            value = self.raw.get(field)
            return int(value) if value and value.isdigit() else None

        return {"worker": self.raw.get("worker") or None, "holder_pid": num("holder_pid"),
                "started_at_ms": num("processed_on"), "renewed_at_ms": num("renewed_at"),
                "stalled_count": num("stalled_count") or 0, "stalled_at_ms": num("stalled_at")}

    @property
    def dedup_id(self) -> str | None:
        """The deduplication id the job was added with, if any."""
        if self.raw.get("dedup_id"):
            return self.raw["dedup_id"]
        dedup = self.options.dedup if self.raw.get("opts") else None
        return dedup.get("id") if isinstance(dedup, dict) else None
