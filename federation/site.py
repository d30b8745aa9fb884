"""Who a ClientApp is: hospital id, data file, privacy budget and ledger, from its config."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.settings import get_settings
from experiments.spec import ExperimentSpec, parse_spec
from federation.errors import SiteConfigError

__all__ = ["Site", "resolve_site", "spec_from_run_config"]


@dataclass(frozen=True)
class Site:
    """One hospital as its ClientApp sees itself."""

    hospital_id: str
    data_path: Path
    budget: float
    ledger_path: Path
    dataset_id: str | None = None  # pinned by the node config; else the data's fingerprint
    statistics: str = "dp"  # the site's policy for the statistics round: dp (noised, charged) or refuse
    policy_file: Path | None = None  # a node config whose [policy] table every request is checked against
    audit_log: Path | None = None  # the hash-chained log of every request on its data


def spec_from_run_config(run_config: dict[str, Any]) -> ExperimentSpec:
    """The experiment spec carried in the run config (``spec``, JSON).

    An empty ``spec`` (plain ``flwr run .``) means the packaged quickstart spec, with
    its hospitals under ``$BIOVERSE_DATA_DIR/quickstart``.
    """
    text = str(run_config.get("spec", "") or "")
    if not text:
        from experiments.examples import quickstart_spec

        return quickstart_spec(get_settings().data_dir / "quickstart")
    return _parse_cached(text)


@functools.lru_cache(maxsize=8)
def _parse_cached(text: str) -> ExperimentSpec:
    """Validated once per process: a ClientApp sees the same run config every round."""
    return parse_spec(json.loads(text), "run-config spec")


def resolve_site(node_config: dict[str, Any], spec: ExperimentSpec, ledger_dir: str = "") -> Site:
    """Work out which hospital this node is.

    Deployment: the SuperNode's ``--node-config`` names it (``hospital-id``,
    ``data-path``, and optionally ``privacy-budget``, ``ledger-path``, ``dataset-id``,
    which pins the dataset the budget belongs to instead of the data's fingerprint,
    ``statistics`` = ``dp`` (default: noised and charged) or ``refuse``, ``policy-file``,
    a node config whose ``[policy]`` table is the site policy, and ``audit-log``); the
    ledger lives beside the data unless told otherwise. Simulation: ``partition-id`` picks the
    spec's n-th hospital, whose ledger lives in ``ledger_dir``.

    Raises:
        SiteConfigError: the node config does not identify a usable hospital.
    """
    if "hospital-id" in node_config:
        hospital_id = str(node_config["hospital-id"])
        if "data-path" not in node_config:
            raise SiteConfigError(f"{hospital_id}: node config lacks data-path")
        data_path = Path(str(node_config["data-path"])).expanduser().resolve()
        listed = spec.hospital(hospital_id)
        default_budget = (listed.privacy_budget if listed else None) or spec.privacy.hospital_budget
        try:
            budget = float(node_config.get("privacy-budget", default_budget))
        except (TypeError, ValueError):
            budget = math.nan
        if not (math.isfinite(budget) and budget > 0):
            raise SiteConfigError(f"{hospital_id}: node config privacy-budget must be a positive, finite epsilon, "
                                  f"not {node_config.get('privacy-budget')!r}")
        ledger = node_config.get("ledger-path") or data_path.parent / ".bioverse-ledger" / f"{hospital_id}.json"
        dataset_id = str(node_config.get("dataset-id", "") or "") or None
        statistics = str(node_config.get("statistics", "dp"))
        if statistics not in ("dp", "refuse"):
            raise SiteConfigError(f"{hospital_id}: node config statistics must be dp or refuse, not {statistics!r}")
        policy = str(node_config.get("policy-file", "") or "")
        audit = str(node_config.get("audit-log", "") or "")
        if policy:  # the site policy's total budget, as node.toml holds it now (edits apply without a restart)
            from federation.site_policy import load_policy

            budget = load_policy(Path(policy)).total_budget
        return Site(hospital_id, data_path, budget, Path(str(ledger)), dataset_id, statistics,
                    Path(policy) if policy else None, Path(audit) if audit else None)
    if "partition-id" not in node_config:
        raise SiteConfigError("node config names no hospital-id (deployment) or partition-id (simulation)")
    index = int(node_config["partition-id"])
    hospitals = spec.data.hospitals
    if not 0 <= index < len(hospitals):
        raise SiteConfigError(f"simulation node {index} has no hospital: the spec lists {len(hospitals)}")
    hospital = hospitals[index]
    if hospital.path is None:
        raise SiteConfigError(f"{hospital.id}: the spec gives no data path for simulation")
    directory = Path(ledger_dir) if ledger_dir else get_settings().data_dir / "ledgers"
    return Site(
        hospital.id,
        hospital.path,
        hospital.privacy_budget or spec.privacy.hospital_budget,
        directory / f"{hospital.id}.json",
    )
