"""The hospital's Flower ClientApp: statistics, DP training and evaluation on local data."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from experiments.errors import ExperimentError
from experiments.spec import ExperimentSpec
from federation.errors import BudgetExceededError, FederationError, SitePolicyRefusal
from federation.hospital import encoder_from_config, site_statistics, train_round, validation_aggregates
from federation.replay import replayed
from federation.secure_aggregation_mod import secure_aggregation_mod
from federation.selection import evaluate_round
from federation.site import Site, resolve_site, spec_from_run_config
from federation.site_guard import audited, enforce_policy
from federation.strategy import CLIP_BOUND
from training.errors import TrainingError
from training.imbalance import received_class_weights

__all__ = ["app"]

log = logging.getLogger(__name__)
torch.set_num_threads(int(os.environ.get("BIOVERSE_CLIENT_THREADS", "1")))

app = ClientApp(mods=[secure_aggregation_mod])  # SecAgg+ rounds: only masked updates leave

#: Failures that are the hospital's business: reported to the coordinator as a status
#: with a reason, not as a crash, so the round goes on with the others.
_SITE_ERRORS = (TrainingError, FederationError, ExperimentError, OSError)


def _site(context: Context, message: Message) -> tuple[Site, ExperimentSpec]:
    """Who this hospital is and the run's spec, once its site policy allows the run (before any work)."""
    spec = spec_from_run_config(dict(context.run_config))
    site = resolve_site(dict(context.node_config), spec, str(context.run_config.get("ledger-dir", "")))
    config = message.content.config_records.get("config")
    enforce_policy(site, spec, str(config.get("run-key", "")) if config else "")
    return site, spec


def _status(message: Message, hospital_id: str, status: str, reason: str = "") -> Message:
    site = ConfigRecord({"hospital-id": hospital_id, "status": status, "reason": reason[:1000]})
    return Message(RecordDict({"site": site}), reply_to=message)


def _hospital_id(context: Context, site: Site | None) -> str:
    if site is not None:
        return site.hospital_id
    return str(context.node_config.get("hospital-id", f"partition-{context.node_config.get('partition-id', '?')}"))


@app.query()
@audited("statistics")
def statistics(message: Message, context: Context) -> Message:
    """Send sufficient statistics of local training rows for federated preprocessing: with
    DP, noised and charged to the privacy ledger (refused when the budget is spent)."""
    site: Site | None = None
    try:
        site, spec = _site(context, message)
        config = message.content.config_records.get("config")
        found = site_statistics(site, spec, str(config.get("run-key", "")) if config else "")
    except (BudgetExceededError, SitePolicyRefusal) as err:
        log.warning("%s refuses the statistics round: %s", err.hospital_id, err)
        return _status(message, err.hospital_id, "refused", str(err))
    except _SITE_ERRORS as err:
        log.warning("statistics failed: %s", err)
        return _status(message, _hospital_id(context, site), "error", str(err))
    reply = _status(message, site.hospital_id, "ok")
    reply.content["statistics"] = ConfigRecord(
        {"stats": json.dumps(found["stats"]), "fingerprint": found["fingerprint"], "dataset": found["dataset"]}
    )
    return reply


@app.train()
@audited("train")
@replayed("train")
def train(message: Message, context: Context) -> Message:
    """Train the global model on local data with DP-SGD, if the privacy ledger allows."""
    config = message.content["config"]
    site: Site | None = None
    try:
        site, spec = _site(context, message)
        outcome = train_round(
            site=site,
            spec=spec,
            encoder=encoder_from_config(dict(config), spec),
            state=message.content["arrays"].to_torch_state_dict(),
            run_key=str(config["run-key"]),
            server_round=int(config["server-round"]),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            class_weights=received_class_weights(str(config["class-weights"]), len(spec.modality.class_names(spec)))
            if "class-weights" in config else None,
            clip_bound=float(config[CLIP_BOUND]) if CLIP_BOUND in config else None,
        )
    except (BudgetExceededError, SitePolicyRefusal) as err:
        log.warning("%s refuses to train: %s", err.hospital_id, err)
        return _status(message, err.hospital_id, "refused", str(err))
    except _SITE_ERRORS as err:
        log.warning("training failed: %s", err)
        return _status(message, _hospital_id(context, site), "error", str(err))
    reply = _status(message, site.hospital_id, "ok")
    reply.content["arrays"] = ArrayRecord(outcome.state)
    reply.content["metrics"] = MetricRecord(outcome.metrics)
    return reply


def _with_global_model(message: Message, context: Context, what: str,
                       handler: Callable[..., Any]) -> tuple[Site, Any] | Message:
    """Run ``handler(site=, spec=, encoder=, state=)`` on the global model the message
    carries; a site failure becomes an ``error`` status reply (returned instead)."""
    site: Site | None = None
    try:
        site, spec = _site(context, message)
        return site, handler(
            site=site,
            spec=spec,
            encoder=encoder_from_config(dict(message.content["config"]), spec),
            state=message.content["arrays"].to_torch_state_dict(),
        )
    except SitePolicyRefusal as err:
        log.warning("%s refuses %s: %s", err.hospital_id, what, err)
        return _status(message, err.hospital_id, "refused", str(err))
    except _SITE_ERRORS as err:
        log.warning("%s failed: %s", what, err)
        return _status(message, _hospital_id(context, site), "error", str(err))


@app.evaluate()
@audited("evaluate")
@replayed("evaluate")
def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the round's global model on the hospital's val rows and release the model
    selection's aggregates (noised and charged with DP); without val rows, on its test
    rows as before (no selection)."""
    config = message.content["config"]
    site: Site | None = None
    try:
        site, spec = _site(context, message)
        metrics, release = evaluate_round(site=site, spec=spec, encoder=encoder_from_config(dict(config), spec),
                                          state=message.content["arrays"].to_torch_state_dict(),
                                          run_key=str(config.get("run-key", "unnamed-run")))
    except (BudgetExceededError, SitePolicyRefusal) as err:
        log.warning("%s refuses the val release: %s", err.hospital_id, err)
        return _status(message, err.hospital_id, "refused", str(err))
    except _SITE_ERRORS as err:
        log.warning("evaluation failed: %s", err)
        return _status(message, _hospital_id(context, site), "error", str(err))
    reply = _status(message, site.hospital_id, "ok")
    reply.content["metrics"] = MetricRecord(metrics)
    if release is not None:
        reply.content["selection"] = ConfigRecord({"aggregates": json.dumps(release, allow_nan=False)})
    return reply


@app.query("validate")
@audited("validate")
def validate(message: Message, context: Context) -> Message:
    """Validation aggregates of the final model on the hospital's held-out rows (counts only)."""
    config = message.content["config"]
    scale = json.loads(str(config["class-scale"])) if "class-scale" in config else None
    done = _with_global_model(message, context, "validation", functools.partial(validation_aggregates, class_scale=scale))
    if isinstance(done, Message):
        return done
    site, aggregates = done
    reply = _status(message, site.hospital_id, "ok")
    reply.content["validation"] = ConfigRecord({"aggregates": json.dumps(aggregates, allow_nan=False)})
    return reply
