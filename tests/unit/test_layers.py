"""The package layering of ARCHITECTURE.md holds (import-linter's contract in pyproject.toml, checked in process)."""

from __future__ import annotations

import sys
from pathlib import Path

import importlinter.cli
import pytest
from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_import_contract_is_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [*sys.path])  # lint_imports puts the cwd in front
    # Its CLI calls logging.config.dictConfig, which disables every logger that exists: in
    # process, the rest of the session's tests would lose their logs (the serving gate's
    # REFUSED line among them). The output checked below is printed, not logged.
    monkeypatch.setattr(importlinter.cli, "_configure_logging", lambda verbose: None)
    status = lint_imports(no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert status == EXIT_STATUS_SUCCESS, out
    assert "1 kept, 0 broken" in out
