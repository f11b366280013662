#!/usr/bin/env python3
"""The fault suite, longer: 100,000 jobs through real supervisors under random
faults (tests/chaos.py), then the verdict as a table.

    .venv/bin/python benchmarks/soak.py                  # 100,000 jobs
    .venv/bin/python benchmarks/soak.py --jobs 20000 --seed 3 --json out.json

It starts its own redis-server (AOF, appendfsync always) on a free loopback
port in a temporary directory; never a shared one. Exit status 1 when the
verdict lists a problem (a lost job, an unexplained second execution ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chaos import Chaos, Plan, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--supervisors", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="write the verdict here too")
    args = ap.parse_args()
    plan = Plan(jobs=args.jobs, supervisors=args.supervisors, concurrency=args.concurrency,
                seed=args.seed, bad_jobs=max(12, args.jobs // 2000), ms=(1, 10),
                deadline_s=max(600.0, args.jobs / 50))
    work = Path(tempfile.mkdtemp(prefix="rqsup-soak-"))
    load_before = os.getloadavg()
    chaos = Chaos(work, plan)
    began = time.monotonic()
    try:
        chaos.run()
        result = chaos.verdict()
    finally:
        chaos.cleanup()
    result["wall_s"] = round(time.monotonic() - began, 1)
    result["load_avg_before"] = [round(x, 2) for x in load_before]
    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["cpus"] = os.cpu_count()
    print(table(result))
    print(f"machine: {os.cpu_count()} cpus, load average before {result['load_avg_before']}, "
          f"after {result['load_avg_after']}")
    for p in result["problems"][:20]:
        print("problem:", p)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not result["problems"]:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs and ledger kept in {work}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
