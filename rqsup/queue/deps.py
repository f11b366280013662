"""A parent job's dependencies, read from any process (BullMQ's job getters).

A mixin of :class:`rqsup.queue.core.QueueCore`: generators of requests, no
I/O. Children are named ``"<queue>:<id>"`` (:func:`rqsup.keys.job_ref`), as
in what processors and ``get_flow`` see. The keys are the parent's flow keys
(docs/redis-schema.md, "Flows"): ``deps`` (SET, children not finished),
``processed`` (HASH, their return values), ``failed_children`` and
``ignored`` (HASHes of failed reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rqsup.errors import InvalidOption, JobNotFound
from rqsup.keys import QueueKeys, job_ref
from rqsup.queue import codec
from rqsup.queue.record import fields_of
from rqsup.queue.scripts import Batch, Command, Op, Script

#: The four kinds of dependency, BullMQ's names, and the key part of each.
DEP_KINDS = {"processed": "processed", "unprocessed": "deps", "failed": "failed_children",
             "ignored": "ignored"}
#: Entries per page when a kind is asked for without a count (BullMQ's 20).
DEFAULT_PAGE = 20


def _page(kind: str, value: Any) -> tuple[int, int]:
    """``True`` or ``{"cursor", "count"}`` -> (cursor, count)."""
    if value is True:
        return 0, DEFAULT_PAGE
    if not isinstance(value, Mapping) or set(value) - {"cursor", "count"}:
        raise InvalidOption(f"{kind} must be True or {{'cursor': int, 'count': int}}, "
                            f"got {value!r}")
    cursor, count = value.get("cursor", 0), value.get("count", DEFAULT_PAGE)
    for name, v, low in (("cursor", cursor, 0), ("count", count, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InvalidOption(f"{kind} {name} must be an int >= {low}, got {v!r}")
    return cursor, count


def _decoded(raw: str) -> Any:
    try:
        return codec.decode(raw)
    except ValueError:
        return raw  # a value rqsup did not write: shown as it is


class DepsOps:
    """Reading and pruning the dependencies of one parent job."""

    keys: QueueKeys

    def script(self, name: str, *args: Any) -> Script:
        raise NotImplementedError  # QueueCore.script

    def _part(self, job_id: str, kind: str) -> str:
        return self.keys.job_part(job_id, DEP_KINDS[kind])

    def op_children_values(self, job_id: str) -> Op[dict[str, Any]]:
        """The return values of the finished children, by child."""
        raw = yield Command(("HGETALL", self._part(job_id, "processed")))
        return {job_ref(k): _decoded(v) for k, v in fields_of(raw).items()}

    def op_failed_children(self, job_id: str) -> Op[dict[str, str]]:
        """Failed reasons of children that failed this parent (policy fail or
        continue), by child."""
        raw = yield Command(("HGETALL", self._part(job_id, "failed")))
        return {job_ref(k): v for k, v in fields_of(raw).items()}

    def op_ignored_failures(self, job_id: str) -> Op[dict[str, str]]:
        """Failed reasons of children with failure policy ignore, by child."""
        raw = yield Command(("HGETALL", self._part(job_id, "ignored")))
        return {job_ref(k): v for k, v in fields_of(raw).items()}

    def op_dependencies(self, job_id: str, asked: Mapping[str, Any]) -> Op[dict[str, Any]]:
        """BullMQ's getDependencies. ``asked`` maps a kind (processed,
        unprocessed, failed, ignored) to True or ``{"cursor", "count"}``: that
        kind, one page of it (HSCAN/SSCAN: ``count`` is a hint, as in Redis),
        with ``next_<kind>_cursor`` (0: the end). Nothing asked: every kind,
        whole. processed and ignored are dicts by child; unprocessed and
        failed are lists of children."""
        unknown = set(asked) - set(DEP_KINDS)
        if unknown:
            raise InvalidOption(f"unknown dependency kinds {sorted(unknown)}; "
                                f"known: {', '.join(DEP_KINDS)}")
        wanted = {kind: v for kind, v in asked.items() if v not in (None, False)}
        yield from self._require_job(job_id)
        if not wanted:
            reqs = [Command(("HGETALL", self._part(job_id, "processed"))),
                    Command(("SMEMBERS", self._part(job_id, "unprocessed"))),
                    Command(("HGETALL", self._part(job_id, "failed"))),
                    Command(("HGETALL", self._part(job_id, "ignored")))]
            processed, deps, failed, ignored = yield Batch(reqs)
            return {"processed": {job_ref(k): _decoded(v)
                                  for k, v in fields_of(processed).items()},
                    "unprocessed": sorted(job_ref(codec.text(m)) for m in deps),
                    "failed": sorted(job_ref(k) for k in fields_of(failed)),
                    "ignored": {job_ref(k): v for k, v in fields_of(ignored).items()}}
        pages = {kind: _page(kind, v) for kind, v in wanted.items()}
        reqs = []
        for kind, (cursor, count) in pages.items():
            cmd = "SSCAN" if kind == "unprocessed" else "HSCAN"
            reqs.append(Command((cmd, self._part(job_id, kind), cursor, "COUNT", count)))
        replies = yield Batch(reqs)
        out: dict[str, Any] = {}
        for kind, (cursor, items) in zip(pages, replies, strict=True):
            out[f"next_{kind}_cursor"] = int(cursor)
            if kind == "unprocessed":
                out[kind] = [job_ref(codec.text(m)) for m in items]
                continue
            fields = fields_of(items)
            if kind == "failed":
                out[kind] = [job_ref(k) for k in fields]
            elif kind == "processed":
                out[kind] = {job_ref(k): _decoded(v) for k, v in fields.items()}
            else:
                out[kind] = {job_ref(k): v for k, v in fields.items()}
        return out

    def op_dependencies_count(self, job_id: str, kinds: list[str]) -> Op[dict[str, int]]:
        """How many dependencies of each kind (every kind when none named)."""
        unknown = set(kinds) - set(DEP_KINDS)
        if unknown:
            raise InvalidOption(f"unknown dependency kinds {sorted(unknown)}; "
                                f"known: {', '.join(DEP_KINDS)}")
        kinds = list(kinds) or list(DEP_KINDS)
        reqs = [Command(("SCARD" if k == "unprocessed" else "HLEN", self._part(job_id, k)))
                for k in kinds]
        counts = yield Batch(reqs)
        return {k: int(n) for k, n in zip(kinds, counts, strict=True)}

    def op_remove_unprocessed_children(self, job_id: str) -> Op[int]:
        """Delete the children that neither finished nor run (and theirs);
        how many of the job's own children went."""
        n = int((yield self.script("remove_unprocessed_children", job_id)))
        if n < 0:
            raise JobNotFound(job_id)
        return n

    def _require_job(self, job_id: str) -> Op[None]:
        if not int((yield Command(("EXISTS", self.keys.job(job_id))))):
            raise JobNotFound(job_id)
