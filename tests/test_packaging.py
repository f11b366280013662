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
    assert "rqsup/demo_dev.toml" in names and "rqsup/dashboard/templates/job.html" in names
    with tarfile.open(sdist) as tar:
        members = {Path(m).relative_to(Path(m).parts[0]).as_posix()
                   for m in tar.getnames() if len(Path(m).parts) > 1}
    for wanted in ("LICENSE", "configs/prod.toml", "configs/dev.toml",
                   "deploy/prometheus/rqsup-rules.yml", "deploy/grafana/rqsup.json",
                   "docs/operations.md"):
        assert wanted in members, wanted
    assert any(m.startswith("systemd/") for m in members)


def test_the_demo_config_outside_a_checkout_lives_in_a_users_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from rqsup import demo
    from rqsup.config.model import load_config

    monkeypatch.setattr(demo, "REPO_CONFIG", tmp_path / "absent.toml")  # as installed
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = demo.default_config()
    assert path == tmp_path / "state" / "rqsup-demo" / "dev.toml"
    cfg = load_config(path)
    assert cfg.redis.start_private and cfg.redis.private_dir.is_relative_to(path.parent)
    for q in cfg.queues:  # the demo's processors import from the package
        module, _, attr = q.processor.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
