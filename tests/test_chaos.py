"""The fault suite at CI size (issue 8): real supervisors, children and a real
redis-server under random faults, with a ledger of every execution kept
outside the queue's Redis. See tests/chaos.py for what it does and checks;
``benchmarks/soak.py`` runs the same for 100,000 jobs."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import Chaos, Plan, table


def test_nothing_is_lost_and_every_rerun_is_explained_under_faults(tmp_path: Path) -> None:
    chaos = Chaos(tmp_path, Plan())
    try:
        chaos.run()
        result = chaos.verdict()
    finally:
        chaos.cleanup()
    print(table(result))
    assert not result["problems"], "\n".join(result["problems"][:20])
    # The run was a real one: faults of every kind happened and jobs ran again.
    assert set(result["faults"]) == set(Plan().weights), result["faults"]
    assert result["reruns"] > 0 and result["supervisor_starts"] > len(chaos.sups)
