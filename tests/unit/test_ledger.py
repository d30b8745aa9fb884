"""The privacy ledger persists, refuses over-budget training and writes atomically."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from federation.errors import BudgetExceededError, FederationError
from federation.ledger import PrivacyLedger


def test_charges_persist_across_instances_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, "h1").charge(run="r1", experiment="e", epsilon=1.0, delta=1e-5, steps=10, budget=5)
    PrivacyLedger(path, "h1").charge(run="r1", experiment="e", epsilon=1.5, delta=1e-5, steps=20, budget=5)  # same run grows
    PrivacyLedger(path, "h1").charge(run="r2", experiment="e", epsilon=2.0, delta=1e-5, steps=5, budget=5)
    ledger = PrivacyLedger(path, "h1")
    assert ledger.spent() == pytest.approx(3.5)
    assert ledger.spent(excluding="r2") == pytest.approx(1.5)
    assert ledger.entry("r1").steps == 20
    assert [e.run for e in ledger.entries()] == ["r1", "r2"]


def test_refusal_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, "h1")
    ledger.charge(run="old", experiment="e", epsilon=4.0, delta=1e-5, steps=10, budget=5)
    before = path.read_bytes()
    with pytest.raises(BudgetExceededError) as info:
        ledger.charge(run="new", experiment="e", epsilon=1.5, delta=1e-5, steps=10, budget=5)
    assert "4.000 spent in earlier runs + 1.500 for this run > budget 5.000" in str(info.value)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_ledger_of_another_hospital_or_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, "h1").charge(run="r", experiment="e", epsilon=1.0, delta=1e-5, steps=1, budget=5)
    with pytest.raises(FederationError, match="belongs to 'h1', not 'h2'"):
        PrivacyLedger(path, "h2").spent()
    path.write_text("{not json")
    with pytest.raises(FederationError, match="unreadable"):
        PrivacyLedger(path, "h1").spent()


def _charge(args: tuple[str, int]) -> bool:
    path, i = args
    try:
        PrivacyLedger(path, "h1").charge(run=f"run-{i}", experiment="e", epsilon=1.0, delta=1e-5, steps=1, budget=5)
        return True
    except BudgetExceededError:
        return False


def test_concurrent_runs_cannot_overspend(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.json")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_charge, [(path, i) for i in range(12)])
    assert sum(results) == 5
    assert len(json.loads(Path(path).read_text())["runs"]) == 5
