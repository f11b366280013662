"""The wheel and the sdist (issue 12, "Also"): both carry the LICENSE; the
sdist carries configs/, systemd/, deploy/ and docs/; the wheel the Lua
scripts."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest
from setuptools import build_meta

REPO = Path(__file__).resolve().parents[1]


def test_wheel_and_sdist_carry_what_they_should(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    wheel = tmp_path / build_meta.build_wheel(str(tmp_path))
    sdist = tmp_path / build_meta.build_sdist(str(tmp_path))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("LICENSE") for n in names), names[-10:]
    assert "rqsup/queue/lua/complete.lua" in names
    assert "rqsup/queue/lua/includes/history.lua" in names
    with tarfile.open(sdist) as tar:
        members = {Path(m).relative_to(Path(m).parts[0]).as_posix()
                   for m in tar.getnames() if len(Path(m).parts) > 1}
    for wanted in ("LICENSE", "configs/prod.toml", "configs/dev.toml",
                   "deploy/prometheus/rqsup-rules.yml", "deploy/grafana/rqsup.json",
                   "docs/operations.md"):
        assert wanted in members, wanted
    assert any(m.startswith("systemd/") for m in members)
