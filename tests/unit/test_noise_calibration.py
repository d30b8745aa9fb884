"""A run's noise is calibrated once and kept in the hospital's ledger; every round's charge is
the epsilon of the noise actually used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.errors import BudgetExceededError
from federation.hospital import charge_round
from federation.ledger import PrivacyLedger
from federation.site import resolve_site
from tests.conftest import make_spec
from training import privacy
from training.dp_loop import sample_rate, steps_per_epoch


def _site(spec, tmp_path: Path):  # noqa: ANN001, ANN202
    return resolve_site({"partition-id": 1, "num-partitions": 3}, spec, str(tmp_path / "ledgers"))


def test_the_ledger_keeps_the_runs_calibration_and_later_rounds_reuse_it(hospital_files: list[Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(hospital_files)
    site = _site(spec, tmp_path)
    noise, _ = charge_round(site, spec, 800, "run-1", 1)
    entry = PrivacyLedger(site.ledger_path, site.hospital_id).entry("run-1")
    assert entry is not None and entry.noise_multiplier == noise
    assert json.loads(entry.calibration)["q"] == sample_rate(800, spec.training.batch_size)

    searched: list[int] = []
    real = privacy.noise_for_budget
    monkeypatch.setattr(privacy, "noise_for_budget", lambda **kw: searched.append(1) or real(**kw))
    again, second = charge_round(site, spec, 800, "run-1", 2)
    assert again == noise and not searched  # no second search in a new process (the cache is the ledger's)

    # a hospital whose data changed size mid-run calibrates again, for what it now holds
    changed, _ = charge_round(site, spec, 500, "run-1", 3)
    assert searched and changed != noise


def _forge(site, factor: float) -> float:  # noqa: ANN001
    data = json.loads(Path(site.ledger_path).read_text())
    forged = data["runs"]["run-1"]["noise_multiplier"] * factor
    data["runs"]["run-1"]["noise_multiplier"] = forged
    Path(site.ledger_path).write_text(json.dumps(data))
    return forged


def test_a_forged_calibration_still_charges_the_epsilon_of_the_noise_used(hospital_files: list[Path],
                                                                          tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    site = _site(spec, tmp_path)
    charge_round(site, spec, 800, "run-1", 1)
    forged = _forge(site, 0.9)  # a little less noise than the target allows
    used, second = charge_round(site, spec, 800, "run-1", 2)
    assert used == forged
    dp = spec.privacy.dp_config
    q = sample_rate(800, spec.training.batch_size)
    steps = 2 * spec.training.local_epochs * steps_per_epoch(800, spec.training.batch_size)
    expected = privacy.epsilon_after(noise_multiplier=used, sample_rate=q, steps=steps, delta=dp.target_delta,
                                     accountant=dp.accountant)
    assert second["epsilon"] == pytest.approx(expected)

    _forge(site, 0.1)  # far less: the budget refuses the round, and nothing is charged
    before = PrivacyLedger(site.ledger_path, site.hospital_id).entry("run-1")
    with pytest.raises(BudgetExceededError):
        charge_round(site, spec, 800, "run-1", 3)
    after = PrivacyLedger(site.ledger_path, site.hospital_id).entry("run-1")
    assert after is not None and before is not None and (after.epsilon, after.last_round) == (before.epsilon, 2)
