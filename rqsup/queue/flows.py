"""Flows: a parent job waits in ``waiting-children`` until its children finish.

:class:`FlowCore` validates and encodes a tree (nothing is written on bad
input) and reads flows back; :class:`rqsup.FlowProducer` and
:class:`rqsup.AsyncFlowProducer` (``rqsup/queue/flow_producer.py``) drive it,
and the worker uses it for step jobs (``job.add_children``). The Redis side is
``lua/includes/flow.lua``; docs/redis-schema.md ("Flows") has the keys.

A tree node is ``{"name", "queue", "data", "opts", "children"}``. A child's
queue defaults to its parent's; its ``opts`` may carry ``failure_policy``:
``"fail"`` (default: the parent fails), ``"ignore"`` (the parent runs and
sees the failure), ``"remove"`` (the parent just stops waiting for it) or
``"continue"`` (BullMQ's continueParentOnFailure: the parent runs at once,
with the failure recorded, whatever children are still pending).
Children are named ``"<queue>:<id>"`` in what processors and ``get_flow`` see.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rqsup.errors import EncodeError, InvalidOption, JobNotFound, raise_for_code
from rqsup.keys import hash_tag, job_ref, validate_name, validate_prefix
from rqsup.queue import codec, tracehook
from rqsup.queue import options as options_mod
from rqsup.queue.core import QueueCore
from rqsup.queue.record import fields_of
from rqsup.queue.scripts import Batch, Command, Op, Script

FAILURE_POLICIES = ("fail", "ignore", "remove", "continue")
#: Levels of nesting at most (the scripts walk trees without recursion; this
#: bounds what Python builds and reads back).
MAX_DEPTH = 100
#: Jobs in one flow at most: one script call creates all of them.
MAX_JOBS = 100_000
NODE_KEYS = frozenset({"name", "queue", "data", "opts", "children"})


@dataclass
class FlowJob:
    """A job of an added flow: its queue, id and name, and its children's."""

    queue: str
    id: str
    name: str
    children: list[FlowJob] = field(default_factory=list)
    #: The root's custom job id existed: nothing was added (an idempotent add);
    #: ``children`` is empty (use ``get_flow``).
    duplicated: bool = False


class _Spec(NamedTuple):
    queue: str
    job_id: str
    name: str
    path: str
    parent: int  # 1-based index of the parent in the flat list, 0 = none
    values: tuple[Any, ...]  # ARGV values after the queue index


class FlowCore:
    """Flow operations for one key prefix; no I/O of its own (see core.py)."""

    def __init__(self, prefix: str = "rqsup", *, cluster: bool = False,
                 max_data_bytes: int = codec.DEFAULT_MAX_DATA_BYTES) -> None:
        validate_prefix(prefix)
        self.prefix = prefix
        self.max_data_bytes = max_data_bytes
        #: The client is a Redis Cluster: a flow must stay in one queue (slot).
        self.cluster = cluster
        self._cores: dict[str, QueueCore] = {}

    def queue_core(self, queue: str) -> QueueCore:
        core = self._cores.get(queue)
        if core is None:
            core = self._cores[queue] = QueueCore(queue, self.prefix)
        return core

    # -- validating and encoding ------------------------------------------------

    def flatten(self, roots: list[Any], default_queue: str | None,
                under_parent: bool) -> list[_Spec]:
        """Validate a forest and list its jobs in pre-order (parents first).

        ``under_parent``: the roots are children of an existing job (step
        jobs), so they take a failure policy."""
        specs: list[_Spec] = []
        seen_ids: dict[tuple[str, str], str] = {}
        cache: dict[str, tuple[Any, ...]] = {}  # options shared by many jobs: built once
        # (node, parent index, default queue, path, ancestors' ids)
        stack: list[tuple[Any, int, str | None, str, tuple[int, ...]]] = [
            (node, 0, default_queue, f"children[{i}]" if under_parent
             else "root" if len(roots) == 1 else f"flows[{i}]", ())
            for i, node in reversed(list(enumerate(roots)))
        ]
        while stack:
            node, parent, queue, path, ancestors = stack.pop()
            if id(node) in ancestors:
                raise InvalidOption(f"flow job {path} contains itself (the tree has a cycle)")
            if len(ancestors) >= MAX_DEPTH:
                raise InvalidOption(f"flow job {path} is nested deeper than {MAX_DEPTH} levels")
            if len(specs) >= MAX_JOBS:
                raise InvalidOption(f"a flow has at most {MAX_JOBS} jobs")
            spec, children, queue = self._spec(node, parent, queue, path,
                                               under_parent or parent > 0, cache)
            key = (queue, spec.job_id)
            if spec.job_id:
                if key in seen_ids:
                    raise InvalidOption(f"flow jobs {seen_ids[key]} and {path} have the same "
                                        f"job id {spec.job_id!r} in queue {queue!r}")
                seen_ids[key] = path
            specs.append(spec)
            index, below = len(specs), (*ancestors, id(node))
            for i in range(len(children) - 1, -1, -1):
                stack.append((children[i], index, queue, f"{path}.children[{i}]", below))
        return specs

    def _spec(self, node: Any, parent: int, queue: Any, path: str, has_parent: bool,
              cache: dict[str, tuple[Any, ...]]) -> tuple[_Spec, list[Any], str]:
        if not isinstance(node, Mapping):
            raise InvalidOption(f"flow job {path} must be a mapping, got {node!r:.60}")
        extra = set(node) - NODE_KEYS
        if extra:
            raise InvalidOption(f"flow job {path} has unknown keys {sorted(extra)} "
                                f"(known: {sorted(NODE_KEYS)})")
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidOption(f"flow job {path}: name must be a non-empty string, got {name!r}")
        queue = node.get("queue", queue)
        if queue is None:
            raise InvalidOption(f"flow job {path} ({name!r}) needs a queue")
        try:
            validate_name("queue name", queue)
        except ValueError as exc:
            raise InvalidOption(f"flow job {path} ({name!r}): {exc}") from None
        children = node.get("children") or []
        if not isinstance(children, list | tuple):
            raise InvalidOption(f"flow job {path} ({name!r}): children must be a list")
        opts = node.get("opts") or {}
        if not isinstance(opts, Mapping):
            raise InvalidOption(f"flow job {path} ({name!r}): opts must be a mapping")
        opts = dict(opts)
        policy = opts.pop("failure_policy", None)
        where = f"flow job {path} ({name!r})"
        if not has_parent:
            if policy is not None:
                raise InvalidOption(f"{where}: failure_policy is for children; the root has "
                                    "no parent")
            policy = ""
        elif policy is None:
            policy = "fail"
        elif policy not in FAILURE_POLICIES:
            raise InvalidOption(f"{where}: failure_policy must be one of {FAILURE_POLICIES}, "
                                f"got {policy!r}")
        if opts.get("dedup") is not None:
            raise InvalidOption(f"{where}: dedup is not supported for flow jobs")
        key = ""
        if "job_id" not in opts:
            with contextlib.suppress(EncodeError):  # timedelta values: not cached
                key = codec.encode(opts, "opts")
        built = cache.get(key) if key else None
        if built is None:
            try:
                job_id, o = options_mod.build(opts, {})
            except InvalidOption as exc:
                raise InvalidOption(f"{where}: {exc}") from None
            built = (job_id or "", codec.encode(o.to_json_dict(), "job options"), o.delay_ms,
                     o.priority, 1 if o.lifo else 0, o.attempts)
            if key:
                cache[key] = built
        if children and built[2]:
            raise InvalidOption(f"{where}: a parent cannot be delayed (it runs when its "
                                "children are done); delay its children instead")
        data = codec.encode_data(node.get("data"), f"data of {where}", self.max_data_bytes)
        values = (built[0], name, data, *built[1:], parent, policy, 1 if children else 0)
        return _Spec(queue, built[0], name, path, parent, values), list(children), queue

    def encode(self, specs: list[_Spec], traceparent: str | None = None) -> list[Any]:
        """ARGV of add_flow.lua (and of add_children.lua after its own three).
        ``traceparent``: the trace context to store in every job (tracing);
        by default the current span's, when tracing is on."""
        if traceparent is None:
            tracing = tracehook.tracing()
            traceparent = tracing.traceparent() if tracing is not None else None
        queues: dict[str, int] = {}
        for s in specs:
            queues.setdefault(s.queue, len(queues) + 1)
        if self.cluster and len(queues) > 1 and hash_tag(self.prefix) is None:
            raise InvalidOption(
                f"a flow across queues ({', '.join(sorted(queues))}) cannot run on Redis "
                "Cluster: each queue hashes to its own slot ({queue} is the hash tag) and one "
                "script must touch every job of the flow; keep a flow in one queue there, or "
                "give the prefix a hash tag (prefix=\"{bull}\") to put every queue in one slot")
        args: list[Any] = [len(queues), *(self.queue_core(q).keys.base for q in queues),
                           len(specs)]
        for s in specs:
            args.append(queues[s.queue])
            if traceparent:
                v = s.values
                args.extend((*v[:3], tracehook.with_trace(v[3], traceparent), *v[4:]))
            else:
                args.extend(s.values)
        return args

    def children_args(self, queue: str, children: Any,
                      traceparent: str | None = None) -> list[Any]:
        """Validate and encode children for add_children.lua (a step job)."""
        if not isinstance(children, list | tuple) or not children:
            raise InvalidOption(
                f"add_children needs a non-empty list of jobs, got {children!r:.60}")
        return self.encode(self.flatten(list(children), queue, True), traceparent)

    # -- operations -------------------------------------------------------------------

    def op_add(self, tree: Any) -> Op[FlowJob]:
        specs = self.flatten([tree], None, False)
        args = self.encode(specs)
        reply = yield Script("add_flow", self.queue_core(specs[0].queue).key_list, args)
        if int(reply[0]) == 1:
            s = specs[int(reply[1]) - 1]
            if s.parent == 0:
                return FlowJob(s.queue, s.job_id, s.name, duplicated=True)
            raise InvalidOption(f"flow job {s.path} ({s.name!r}): job id {s.job_id!r} already "
                                f"exists in queue {s.queue!r}; nothing was added")
        nodes = [FlowJob(s.queue, codec.text(i), s.name)
                 for s, i in zip(specs, reply[1:], strict=True)]
        for s, node in zip(specs, nodes, strict=True):
            if s.parent:
                nodes[s.parent - 1].children.append(node)
        return nodes[0]

    def op_add_bulk(self, trees: Any) -> Op[list[FlowJob]]:
        """Add several flows in one script call (all or none, as BullMQ's
        addBulk); a custom id that exists refuses the whole call."""
        if not isinstance(trees, list | tuple) or not trees:
            raise InvalidOption(f"add_bulk needs a non-empty list of flows, got {trees!r:.60}")
        specs = self.flatten(list(trees), None, False)
        args = self.encode(specs)
        reply = yield Script("add_flow", self.queue_core(specs[0].queue).key_list, args)
        if int(reply[0]) == 1:
            s = specs[int(reply[1]) - 1]
            raise InvalidOption(f"flow job {s.path} ({s.name!r}): job id {s.job_id!r} already "
                                f"exists in queue {s.queue!r}; nothing was added")
        nodes = [FlowJob(s.queue, codec.text(i), s.name)
                 for s, i in zip(specs, reply[1:], strict=True)]
        roots = []
        for s, node in zip(specs, nodes, strict=True):
            if s.parent:
                nodes[s.parent - 1].children.append(node)
            else:
                roots.append(node)
        return roots

    def op_add_to_parent(self, parent: Any, node: dict[str, Any]) -> Op[tuple[str, bool]]:
        """Add one job (``node``, no children) as a child of the existing job
        ``parent`` = ``{"id", "queue"}`` (queue: the child's when left out).
        Returns (the child's id, created); created is False when its custom
        id existed (nothing was written)."""
        if not isinstance(parent, Mapping) or "id" not in parent or \
                set(parent) - {"id", "queue"}:
            raise InvalidOption(f"parent must be {{'id': ..., 'queue': ...}}, got {parent!r}")
        pid, pq = str(parent["id"]), parent.get("queue", node["queue"])
        validate_name("queue name", pq)
        if self.cluster and pq != node["queue"] and hash_tag(self.prefix) is None:
            raise InvalidOption(f"a parent in queue {pq!r} and a child in {node['queue']!r} "
                                "cannot be joined on Redis Cluster without a hash tag in "
                                "the prefix (prefix=\"{bull}\")")
        specs = self.flatten([node], node["queue"], True)
        reply = yield Script("add_to_parent", self.queue_core(pq).key_list,
                             [pid, *self.encode(specs)])
        code = int(reply[0])
        if code == 1:
            return specs[0].job_id, False
        if code < 0:
            if code == -1:
                raise JobNotFound(pid)
            raise_for_code(code, pid, "add a child to", codec.text(reply[1]))
        return codec.text(reply[1]), True

    def op_get_flow(self, queue: str, job_id: str, depth: int = 10,
                    max_children: int = 1000) -> Op[dict[str, Any] | None]:
        """The job and its children (``depth`` levels, at most ``max_children``
        per job) as nested dicts: ``{queue, id, name, state, return_value,
        failed_reason, children}``; None when the job does not exist."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise InvalidOption(f"depth must be an int >= 0, got {depth!r}")
        root: dict[str, Any] = {"queue": queue, "id": job_id}
        level = [root]
        for d in range(depth + 1):
            reqs: list[Script | Command] = []
            for node in level:
                qk, jid = self.queue_core(node["queue"]).keys, node["id"]
                reqs += [Command(("HGETALL", qk.job(jid))),
                         Command(("SMEMBERS", qk.job_part(jid, "deps"))),
                         Command(("HGETALL", qk.job_part(jid, "processed"))),
                         Command(("HGETALL", qk.job_part(jid, "ignored"))),
                         Command(("HGETALL", qk.job_part(jid, "failed_children")))]
            by_queue: dict[str, list[dict[str, Any]]] = {}
            for node in level:
                by_queue.setdefault(node["queue"], []).append(node)
            for q, nodes in by_queue.items():
                reqs.append(Script("state", self.queue_core(q).key_list, [n["id"] for n in nodes]))
            replies = yield Batch(reqs)
            states = iter(replies[5 * len(level):])
            for nodes in by_queue.values():
                for n, st in zip(nodes, next(states), strict=True):
                    n["state"] = codec.text(st)
            following: list[dict[str, Any]] = []
            for i, node in enumerate(level):
                h, deps, processed, ignored, failed = replies[5 * i:5 * i + 5]
                fields = fields_of(h)
                node.setdefault("return_value", None)
                node["name"] = fields.get("name")
                if "returnvalue" in fields:
                    node["return_value"] = codec.decode(fields["returnvalue"])
                node["failed_reason"] = fields.get("failed_reason") or node.get("failed_reason")
                node["children"] = []
                values = fields_of(processed)
                reasons = {**fields_of(ignored), **fields_of(failed)}
                keys = {codec.text(k) for k in deps} | set(values) | set(reasons)
                if d == depth or not keys:
                    continue
                for key in sorted(keys, key=_child_order)[:max_children]:
                    ref = job_ref(key)
                    cq, _, cid = ref.partition(":")
                    child: dict[str, Any] = {"queue": cq, "id": cid, "return_value": None}
                    if key in values:
                        child["return_value"] = codec.decode(values[key])
                    if key in reasons:
                        child["failed_reason"] = reasons[key]
                    node["children"].append(child)
                    following.append(child)
            if root.get("state") == "missing":
                return None
            level = following
            if not level:
                break
        return root


def _child_order(key: str) -> tuple[str, int, str]:
    ref = job_ref(key)
    q, _, i = ref.partition(":")
    return (q, int(i) if i.isdigit() else 1 << 62, i)
