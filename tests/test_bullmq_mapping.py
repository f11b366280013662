"""docs/bullmq-mapping.md stays true: every rqsup name it lists exists (with
its asyncio twin), every option and event it names is one rqsup knows, and
every "not provided" says why."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import rqsup
from rqsup import errors
from rqsup.queue.ajob import AsyncJob
from rqsup.queue.events import QueueEvents
from rqsup.queue.flow_producer import AsyncFlowProducer, FlowProducer
from rqsup.queue.options import DEDUP_FLAGS, OPTION_NAMES
from rqsup.sandbox.job import ActiveJob
from rqsup.supervisor import Worker
from rqsup.supervisor.local_events import NAMES as WORKER_EVENTS
from rqsup.supervisor.manual import ManualJob

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bullmq-mapping.md"
CLASSES = {"Queue": rqsup.Queue, "Job": rqsup.Job, "Worker": Worker, "ActiveJob": ActiveJob,
           "ManualJob": ManualJob, "FlowProducer": FlowProducer, "QueueEvents": QueueEvents}
TWINS = {"Queue": rqsup.AsyncQueue, "Job": AsyncJob, "FlowProducer": AsyncFlowProducer}


def stream_events() -> set[str]:
    """Every event name a script writes to the stream."""
    names: set[str] = set()
    for lua in (REPO / "rqsup" / "queue" / "lua").rglob("*.lua"):
        names |= set(re.findall(r"'event', '([a-z-]+)'", lua.read_text()))
    return names


def rows() -> list[tuple[str, str, str, str]]:
    """(section, bullmq, rqsup, notes) of every table row under a heading."""
    out, section = [], ""
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[:2] == ["BullMQ", "rqsup"]:
                continue
            assert len(cells) == 3, f"a row of {section!r} needs 3 cells: {line}"
            out.append((section, *cells))
    return out


def attribute_exists(cls: type, name: str) -> bool:
    if hasattr(cls, name):
        return True
    fields = getattr(cls, "__dataclass_fields__", {})
    return name in fields or name in getattr(cls, "__slots__", ())


def test_every_name_in_the_map_exists() -> None:
    known_events = stream_events()
    options = OPTION_NAMES | {"parent", "failure_policy"}
    worker_params = set(inspect.signature(Worker.__init__).parameters) - {"self"}
    problems = []
    found = rows()
    assert len(found) > 100, "the map lost most of its rows"
    for section, bullmq, mapped, notes in found:
        where = f"{section}: {bullmq}"
        if mapped == "not provided":
            if len(notes) < 10:
                problems.append(f"{where}: 'not provided' needs a reason")
            continue
        names = re.findall(r"`([^`]+)`", mapped)
        if not names:
            problems.append(f"{where}: no rqsup name in {mapped!r}")
        for name in names:
            if section == "Worker options":
                ok = name in worker_params
            elif section == "Job options":
                ok = name in options
            elif section.startswith("Worker events"):
                ok = name in WORKER_EVENTS
            elif section == "Events in the stream":
                ok = name in known_events
            elif name.startswith("errors."):
                ok = hasattr(errors, name.split(".", 1)[1])
            else:
                cls_name, _, attr = name.partition(".")
                cls = CLASSES.get(cls_name)
                ok = cls is not None and attribute_exists(cls, attr)
                twin = TWINS.get(cls_name)
                if (ok and twin is not None and not attr.startswith("__") and attr != "raw"
                        and not attribute_exists(twin, attr)):
                    problems.append(f"{where}: {name} has no asyncio twin on {twin.__name__}")
            if not ok:
                problems.append(f"{where}: {name} is not an rqsup name ({section})")
    assert not problems, "\n".join(problems)


def test_the_dedup_flags_and_events_named_in_the_map_are_rqsup_s() -> None:
    text = DOC.read_text()
    for flag in DEDUP_FLAGS:
        assert f'"{flag}"' in text, flag
    for event in ("cancelled", "completed", "failed", "deduplicated"):
        assert event in stream_events()
