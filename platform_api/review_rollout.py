"""The review page's rollout section: the model's staged rollout, both versions' live figures, and its controls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from experiments.rollout_rules import RolloutConfig
from platform_api.rollouts import RolloutService, rollouts_at
from platform_api.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from platform_api.auth import Principal

__all__ = ["ROLLOUT_ACTIONS", "RolloutOutcome", "rollout_action", "rollout_section"]

#: What the section's form may ask.
ROLLOUT_ACTIONS = ("start", "pause", "resume", "abort")

_SECTION = """<h2 id="rollout">Staged rollout</h2>
{% if s %}<table><tr><th>candidate</th><th>current</th><th>state</th><th>step</th><th>traffic to candidate</th><th>last change</th></tr>
<tr><td>version {{ s.version }}</td><td>version {{ s.current_version }}</td><td><span class="badge alias">{{ s.state }}</span></td>
<td>{{ s.step }}</td><td class="n">{{ s.share }}%{% if s.shadow %} (shadow){% endif %}</td><td>{{ s.reason }}</td></tr></table>
<table><tr><th>version</th><th>requests</th><th>error rate</th><th>p99 latency (ms)</th></tr>
{% for label, f in (("current, whole rollout", s.current), ("candidate, this step", s.candidate)) %}
<tr><td>{{ label }}</td><td class="n">{{ f.requests }}</td><td class="n">{{ "%.4f"|format(f.error_rate) }}</td>
<td class="n">{{ f.p99_ms }}</td></tr>{% endfor %}</table>
<p class="muted">prediction shift (PSI) {{ "%.4f"|format(s.candidate_vs_current_psi) }}{% if s.verdict %} · rules say
<strong>{{ s.verdict.action }}</strong>: {{ s.verdict.reason }}{% endif %}</p>
{% else %}<p>No rollout of this model yet.</p>{% endif %}
{% if can_act %}<form method="post" action="/review/{{ name|urlencode }}/{{ version }}/rollout" class="decide">
<input type="hidden" name="csrf" value="{{ csrf }}">
{% if can_start %}<p>Roll version {{ version }} out in steps ({{ steps }} percent of prediction traffic), judged by the rules.</p>
<button class="primary" name="action" value="start" type="submit">Start staged rollout</button>{% endif %}
{% if s and s.state == "running" %}<button name="action" value="pause" type="submit">Pause</button>{% endif %}
{% if s and s.state == "paused" %}<button name="action" value="resume" type="submit">Resume</button>{% endif %}
{% if s and s.state in ("running", "paused") %}<button class="danger" name="action" value="abort" type="submit">Abort</button>{% endif %}
</form>{% endif %}"""


@dataclass(frozen=True)
class RolloutOutcome:
    """What a form action did (the page flashes ``outcome``)."""

    outcome: str


def _service() -> RolloutService:
    settings = get_settings()
    return rollouts_at(settings.resolved_tracking_uri(), settings.resolved_database_url())


def rollout_section(env: Any, name: str, version: str, *, validator: bool, approved: bool, csrf: str) -> Markup:
    """The section of ``version``'s page: the model's latest rollout and, for validators, its buttons
    (start on an approved version that is not production; pause, resume, abort while one is active)."""
    state = _service().registry.rollout(name)
    status = _service().status(name).as_dict() if state is not None else None
    active = status is not None and status["state"] in ("running", "paused")
    can_start = validator and approved and not active
    html = env.from_string(_SECTION).render(s=status, name=name, version=version, csrf=csrf, can_start=can_start,
                                            can_act=validator and (can_start or active),
                                            steps=", ".join(map(str, RolloutConfig().steps)))
    return Markup(html)


def rollout_action(action: str, name: str, version: str) -> Callable[[Session, Principal], RolloutOutcome]:
    """The form's action through the rollout service (default settings for a start)."""
    service = _service()

    def act(db: Session, who: Principal) -> RolloutOutcome:
        if action == "start":
            state = service.start(db, who, name, version, RolloutConfig())
        else:
            state = getattr(service, action)(db, who, name)
        return RolloutOutcome(f"rollout of version {state.version}: {state.state}, step {state.step_label}")

    return act
