"""The shipped systemd units carry the directives the supervisor's design relies on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ["rqsup.service", "rqsup@.service"]
DEFAULT_SHUTDOWN_GRACE_S = 30


def parse_unit(path: Path) -> configparser.ConfigParser:
    """Unit files are ini-like; keep key case and take `$MAINPID` literally."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def seconds(value: str) -> float:
    """A systemd time span in the forms these units use: "60", "60s", "1min", "2m"."""
    for suffix, factor in (("min", 60), ("ms", 0.001), ("s", 1), ("m", 60)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize("name", UNITS)
def test_unit_has_the_directives_the_supervisor_needs(name: str) -> None:
    service = parse_unit(UNITS_DIR / name)["Service"]

    # readiness and the watchdog come from the supervisor itself, nobody else
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert seconds(service["WatchdogSec"]) > 0
    # stop: SIGTERM to the supervisor only, and enough time to drain
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    assert seconds(service["TimeoutStopSec"]) > DEFAULT_SHUTDOWN_GRACE_S
    # restart and reload
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].startswith("/opt/rqsup/venv/bin/rqsup start /etc/rqsup/")
    # a dedicated user and a sandbox
    assert service["User"] == "rqsup" and service["Group"] == "rqsup"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["StateDirectory"].startswith("rqsup")
    assert service["WorkingDirectory"].startswith("/var/lib/rqsup")
    assert service["LimitNOFILE"] == "65536"
    assert "PYTHONUNBUFFERED=1" in service["Environment"]


def test_the_template_runs_one_config_per_instance() -> None:
    service = parse_unit(UNITS_DIR / "rqsup@.service")["Service"]
    assert service["ExecStart"] == "/opt/rqsup/venv/bin/rqsup start /etc/rqsup/%i.toml"


def test_the_units_differ_only_where_instances_need_it() -> None:
    plain = parse_unit(UNITS_DIR / "rqsup.service")["Service"]
    template = parse_unit(UNITS_DIR / "rqsup@.service")["Service"]
    differing = {key for key in set(plain) | set(template) if plain.get(key) != template.get(key)}
    assert differing == {"ExecStart", "StateDirectory", "WorkingDirectory"}


def test_systemd_analyze_accepts_the_units(tmp_path: Path) -> None:
    # Given copies whose ExecStart points to a binary that exists here
    if shutil.which("systemd-analyze") is None:
        # The parse checks above still ran; only the cross-check needs systemd.
        return
    true_bin = shutil.which("true")
    assert true_bin is not None
    copies = []
    for name in UNITS:
        text = (UNITS_DIR / name).read_text()
        text = text.replace("ExecStart=/opt/rqsup/venv/bin/rqsup", f"ExecStart={true_bin}")
        # verify loads a template only through an instance name
        copy = tmp_path / name.replace("@.", "@demo.")
        copy.write_text(text)
        copies.append(str(copy))

    # When systemd-analyze verifies them
    result = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60
    )

    # Then it fails nothing and warns about nothing in them (unknown keys only warn)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "rqsup" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr
