"""The package layering of ARCHITECTURE.md holds (import-linter's contract in pyproject.toml, checked in process)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_import_contract_is_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [*sys.path])  # lint_imports puts the cwd in front
    status = lint_imports(no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert status == EXIT_STATUS_SUCCESS, out
    assert "1 kept, 0 broken" in out
