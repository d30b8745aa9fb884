"""Staged rollouts' rules and routing: config validation, statistics, the step decision, the hash split."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from experiments.rollout import RolloutState
from experiments.rollout_rules import RolloutConfig, VersionStats, decide
from serving.routing import route_bucket, to_candidate


def _stats(n: int, *, errors: int = 0, risk: float = 0.3, seconds: float = 0.001) -> VersionStats:
    stats = VersionStats()
    for i in range(n):
        stats.observe(seconds, None if i < errors else [risk])
    return stats


def _state(step: int, steps: list[int], state: str = "running") -> RolloutState:
    return RolloutState(id="r1", model="m", version="2", current="1", state=state, step=step, step_started=0.0,
                        started_by="Dr Quinn", config=RolloutConfig(steps=steps).model_dump())


@pytest.mark.parametrize(("steps", "field_text"), [([50, 10, 100], "rise"), ([10, 50], "last step"), ([0, 100], "1 to 100"),
                                                    ([], "at least 1")])
def test_config_refuses_bad_steps(steps: list[int], field_text: str) -> None:
    with pytest.raises(ValidationError) as err:
        RolloutConfig(steps=steps)
    assert err.value.errors()[0]["loc"] == ("steps",) and field_text in str(err.value)


def test_unknown_config_keys_are_refused() -> None:
    with pytest.raises(ValidationError) as err:
        RolloutConfig.model_validate({"stepz": [100]})
    assert err.value.errors()[0]["loc"] == ("stepz",)


def test_stats_merge_rates_p99_and_psi() -> None:
    a = _stats(100, errors=5, seconds=0.002)
    b = _stats(100, seconds=0.2)
    assert a.error_rate == 0.05 and a.p99_ms < b.p99_ms
    merged = VersionStats().merge(a).merge(b)
    assert merged.requests == 200 and merged.errors == 5
    assert _stats(50, risk=0.3).psi(_stats(80, risk=0.3)) == pytest.approx(0.0)
    assert _stats(50, risk=0.9).psi(_stats(50, risk=0.1)) > 1.0


def test_decide_holds_advances_pauses_rolls_back_and_completes() -> None:
    config = RolloutConfig(min_requests=50, min_seconds=10)
    current = _stats(500)
    assert decide(config, last_step=False, step_seconds=5, current=current, candidate=_stats(100)).action == "hold"
    assert decide(config, last_step=False, step_seconds=20, current=current, candidate=_stats(10)).action == "hold"
    assert decide(config, last_step=False, step_seconds=20, current=current, candidate=_stats(100)).action == "advance"
    assert decide(config, last_step=True, step_seconds=20, current=current, candidate=_stats(100)).action == "complete"
    # error rate over the rollback limit: at once, before the step's minimum time or requests
    verdict = decide(config, last_step=False, step_seconds=0, current=current, candidate=_stats(20, errors=5))
    assert verdict.action == "rollback" and "0.250" in verdict.reason
    slow = decide(config, last_step=False, step_seconds=20, current=current, candidate=_stats(100, seconds=0.5))
    assert slow.action == "pause" and "p99" in slow.reason
    shifted = decide(config, last_step=False, step_seconds=20, current=current, candidate=_stats(100, risk=0.95))
    assert shifted.action == "pause" and "PSI" in shifted.reason
    worse = decide(config, last_step=False, step_seconds=20, current=current, candidate=_stats(100, errors=3))
    assert worse.action == "pause" and "error rate" in worse.reason


def test_routing_is_stable_per_twin_and_follows_the_share() -> None:
    keys = [f"twin-{i}" for i in range(4000)]
    assert [route_bucket("r1", k) for k in keys] == [route_bucket("r1", k) for k in keys]
    for step, share in enumerate([10, 50, 100]):
        state = _state(step, [10, 50, 100])
        chosen = sum(to_candidate(state, k) for k in keys) / len(keys)
        assert abs(chosen - share / 100) < 0.03
    # a twin on the candidate at 10% stays there at 50%: buckets do not move between steps
    early = {k for k in keys if to_candidate(_state(0, [10, 50, 100]), k)}
    assert early <= {k for k in keys if to_candidate(_state(1, [10, 50, 100]), k)}
    # paused keeps the split; ended, shadow, no key or no rollout: production
    assert sum(to_candidate(_state(1, [10, 50, 100], "paused"), k) for k in keys) > 1000
    for state in (_state(1, [10, 50, 100], "rolled_back"), _state(2, [10, 50, 100], "aborted"), _state(-1, [10, 50, 100]), None):
        assert not any(to_candidate(state, k) for k in keys)
    assert not to_candidate(_state(2, [10, 50, 100]), None)


def test_state_round_trips_through_its_tag() -> None:
    state = _state(1, [10, 50, 100])
    assert RolloutState.from_json(state.to_json()) == state
    assert state.share == 50 and state.step_label == "2/3 (50%)" and not state.shadow
    assert _state(-1, [100]).shadow and _state(-1, [100]).step_label == "shadow"


def test_cli_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from platform_api.cli import app

    bad = tmp_path / "rollout.yaml"
    bad.write_text("rollout:\n  steps: [10, 50]\n")
    for args, expected in ((["--config", str(bad)], "rollout config steps: Value error, the last step must be 100"),
                           (["--steps", "ten"], "--steps 'ten': comma-separated whole percentages"),
                           (["--steps", "10,100", "--config", str(tmp_path / "missing.yaml")], "missing.yaml")):
        result = CliRunner().invoke(app, ["rollout", "start", "2", *args])
        assert result.exit_code == 1 and expected in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
