"""``bioverse rollout``: start, status, pause, resume, abort and watch staged rollouts between registry versions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from platform_api.cli.access import KeyOpt, ModelOpt, UriOpt, api_session, principal
from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out

if TYPE_CHECKING:
    from experiments.rollout import RolloutState
    from experiments.rollout_rules import RolloutConfig
    from platform_api.rollouts import RolloutService, RolloutStatus

__all__ = ["rollout_app"]

rollout_app = typer.Typer(help="Staged rollouts of an approved version: start, status, pause, resume, abort, watch.",
                          no_args_is_help=True)

_DECIDERS = ("clinical_validator", "admin")


def _service(model: str | None, tracking_uri: str | None) -> tuple[RolloutService, str]:
    from experiments.rollout import RolloutRegistry
    from platform_api.db import get_engine
    from platform_api.rollouts import RolloutService
    from platform_api.settings import get_settings

    settings = get_settings()
    registry = RolloutRegistry(tracking_uri or settings.resolved_tracking_uri())
    return RolloutService(registry, get_engine(settings.resolved_database_url())), model or settings.model_name


def load_config(path: Path | None, steps: str | None, shadow: bool | None) -> RolloutConfig:
    """The rollout config: a YAML file (its ``rollout:`` section, or the whole file), then the options.

    Raises:
        CliInputError: unreadable file or a value the config refuses (the field named).
    """
    import yaml
    from pydantic import ValidationError

    from experiments.rollout_rules import RolloutConfig

    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CliInputError(f"--config {path}: {' '.join(str(err).split())}") from None
        if not isinstance(loaded, dict):
            raise CliInputError(f"--config {path}: a mapping of rollout settings is expected")
        raw = loaded.get("rollout", loaded)
        if not isinstance(raw, dict):
            raise CliInputError(f"--config {path}: rollout: a mapping is expected")
    if steps is not None:
        try:
            raw["steps"] = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise CliInputError(f"--steps {steps!r}: comma-separated whole percentages, e.g. 10,50,100") from None
    if shadow is not None:
        raw["shadow"] = shadow
    try:
        return RolloutConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise CliInputError(f"rollout config {where}: {first['msg']}") from None


def _print_state(state: RolloutState, verb: str) -> None:
    out.print(f"[bold green]{verb}[/] rollout of {state.model} version {state.version} (current {state.current}): "
              f"{state.state}, step {state.step_label}, {state.share}% of traffic"
              + (", shadow" if state.shadow else ""), highlight=False)


def _print_status(status: RolloutStatus) -> None:
    s = status.state
    out.print(f"{s.model} version {s.version} (current {s.current}): {s.state}, step {s.step_label}, "
              f"{s.share}% of traffic{', shadow' if s.shadow else ''}; started by {s.started_by}", highlight=False,
              markup=False)
    out.print(f"  last change: {s.reason}", highlight=False, markup=False)
    for label, stats in (("current (whole rollout)", status.current), ("candidate (this step)", status.candidate)):
        out.print(f"  {label}: {stats.requests} requests, error rate {stats.error_rate:.4f}, p99 {stats.p99_ms:.3g} ms",
                  highlight=False, markup=False)
    out.print(f"  prediction shift (PSI): {status.candidate.psi(status.current):.4f}", highlight=False, markup=False)
    if status.verdict is not None:
        out.print(f"  rules: {status.verdict.action}: {status.verdict.reason}", highlight=False, markup=False)


@rollout_app.command("start")
@one_line_errors
def rollout_start(
    version: Annotated[str, typer.Argument(help="An approved version.")],
    config: Annotated[Path | None, typer.Option("--config", help="YAML with the rollout settings (a `rollout:` section).")] = None,
    steps: Annotated[str | None, typer.Option(help="Percent steps, e.g. 10,50,100 (overrides the config).")] = None,
    shadow: Annotated[bool | None, typer.Option("--shadow/--no-shadow", help="Start with a shadow step.")] = None,
    api_key: KeyOpt = None,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Start a staged rollout of an approved version; the audit log records it."""
    rules = load_config(config, steps, shadow)
    who = principal(api_key, "clinical_validator")
    service, name = _service(model, tracking_uri)
    with api_session() as session:
        _print_state(service.start(session, who, name, version, rules), "started")


@rollout_app.command("status")
@one_line_errors
def rollout_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """The rollout, both versions' live statistics and what the rules say now (changes nothing)."""
    service, name = _service(model, tracking_uri)
    status = service.status(name)
    if as_json:
        out.print_json(json.dumps(status.as_dict()))
    else:
        _print_status(status)


def _simple(action: str) -> Any:
    @one_line_errors
    def command(api_key: KeyOpt = None, model: ModelOpt = None, tracking_uri: UriOpt = None) -> None:
        who = principal(api_key, *_DECIDERS)
        service, name = _service(model, tracking_uri)
        with api_session() as session:
            _print_state(getattr(service, action)(session, who, name), {"pause": "paused", "resume": "resumed",
                                                                       "abort": "aborted"}[action])

    command.__doc__ = {"pause": "Hold the rollout at its step (traffic stays split); audited.",
                       "resume": "Let a paused rollout's step be judged again; audited.",
                       "abort": "End the rollout: production takes all traffic again; audited."}[action]
    return command


for _action in ("pause", "resume", "abort"):
    rollout_app.command(_action)(_simple(_action))


@rollout_app.command("watch")
@one_line_errors
def rollout_watch(
    every: Annotated[float, typer.Option(min=0.1, help="Seconds between the controller's steps.")] = 5.0,
    max_seconds: Annotated[float | None, typer.Option(min=0, help="Stop after this long (default: when the rollout ends).")] = None,
    model: ModelOpt = None,
    tracking_uri: UriOpt = None,
) -> None:
    """The controller: judge the rollout every few seconds and advance, complete, pause or
    roll back by its rules (each change audited as rollout-controller) until it ends."""
    service, name = _service(model, tracking_uri)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    last = None
    while True:
        with api_session() as session:
            status = service.step(session, name)
        seen = (status.state.state, status.state.step)
        if seen != last:
            _print_status(status)
            if status.state.state == "paused":
                out.print("  paused: waiting for resume or abort", highlight=False, markup=False)
            last = seen
        if status.state.state not in ("running", "paused") or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(every)
