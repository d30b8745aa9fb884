"""The hospital's guard around each ClientApp request: its site policy before any work, an audit row after."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict

from experiments.errors import ExperimentError
from federation.errors import FederationError
from federation.hospital import site_ledger
from federation.ledger import CHARGES
from federation.site import Site, resolve_site, spec_from_run_config
from federation.site_audit import AuditRow, append_row, spec_fingerprint
from federation.site_policy import check_policy, load_policy

__all__ = ["audited", "enforce_policy"]

log = logging.getLogger(__name__)
Handler = Callable[[Message, Context], Message]
OUTCOMES = {"ok": "accepted", "refused": "refused"}


def _of_run(entry: str, run_key: str) -> bool:
    """Whether a ledger entry (``<run>`` or ``<run>/<release>``) belongs to the run."""
    return entry == run_key or entry.startswith(run_key + "/")


def enforce_policy(site: Site, spec: Any, run_key: str) -> None:
    """Check the run against the site's policy (its node config's ``[policy]``), if it has
    one, before any work on its data: the rules, and whether the run fits in what other
    runs left of its budget.

    Raises:
        SitePolicyRefusal: the policy does not allow the run.
        SiteConfigError: the policy file is unreadable or invalid.
    """
    if site.policy_file is None:
        return
    policy = load_policy(site.policy_file)
    spent = sum(e.epsilon for e in site_ledger(site).entries() if not _of_run(e.run, run_key))
    check_policy(policy, spec, site.hospital_id, spent)


@functools.lru_cache(maxsize=8)
def _fingerprint(spec_json: str) -> str:
    try:
        return spec_fingerprint(spec_json)
    except ValueError:
        return "unparsable"


def _request(message: Message, context: Context) -> tuple[str, str]:
    """The run key and round a request names (``server-round`` in its config, else its group)."""
    config = message.content.config_records.get("config")
    run_key = str(config.get("run-key", "")) if config else ""
    round_ = config.get("server-round") if config else None
    return run_key, str(round_ if round_ is not None else message.metadata.group_id or "")


def _site_or_none(context: Context) -> Site | None:
    try:
        return resolve_site(dict(context.node_config), spec_from_run_config(dict(context.run_config)))
    except (FederationError, ExperimentError, ValueError):
        return None


@contextlib.contextmanager
def _charges() -> Iterator[list[tuple[str, float]]]:
    """The ledger charges (run, epsilon added) made in this context while it lasts."""
    heard: list[tuple[str, float]] = []
    token = CHARGES.set(heard)
    try:
        yield heard
    finally:
        CHARGES.reset(token)


def _append(where: str, kind: str, context: Context, site: Site | None, request: tuple[str, str],
            charged: list[tuple[str, float]], status: str, reason: str) -> str:
    """Append the request's row (epsilon: what it charged the run's ledger entries) and return the new head."""
    run_key, round_ = request
    epsilon = sum(added for run, added in charged if run_key and _of_run(run, run_key))
    return append_row(Path(where), AuditRow(
        run=run_key, round=round_, message=kind, spec=_fingerprint(str(context.run_config.get("spec", "") or "")),
        launcher=str(context.run_config.get("launched-by", "") or ""),
        epsilon=max(epsilon, 0.0), outcome=OUTCOMES.get(status, "error"), reason=reason,
        hospital=site.hospital_id if site else str(context.node_config.get("hospital-id", "")),
        flower_run=str(context.run_id)))


def audited(kind: str) -> Callable[[Handler], Handler]:
    """Record every request of ``kind`` on this hospital's data in its audit log (node config
    ``audit-log``), accepted, refused or failed, with the epsilon it charged; without a log,
    as is.

    A reply whose row cannot be written is replaced by an ``error`` status: nothing leaves
    the hospital unaudited. The reply's ``site`` record carries the chain's new head hash
    (``audit-head``), so the coordinator holds an anchor outside the hospital.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def guarded(message: Message, context: Context) -> Message:
            where = str(context.node_config.get("audit-log", "") or "")
            if not where:
                return handler(message, context)
            request = _request(message, context)
            site = _site_or_none(context)
            with _charges() as charged:
                try:
                    reply = handler(message, context)
                except Exception as err:  # a crash is recorded too, then goes on to Flower
                    with contextlib.suppress(FederationError, OSError):
                        _append(where, kind, context, site, request, charged, "error", f"{type(err).__name__}: {err}"[:500])
                    raise
            record = reply.content.config_records.get("site")
            try:
                head = _append(where, kind, context, site, request, charged,
                               str(record.get("status", "error")) if record else "error",
                               str(record.get("reason", "")) if record else "")
            except (FederationError, OSError) as err:
                log.error("%s not sent: %s", kind, err)
                hospital = site.hospital_id if site else str(context.node_config.get("hospital-id", ""))
                return Message(RecordDict({"site": ConfigRecord(
                    {"hospital-id": hospital, "status": "error", "reason": f"audit log: {err}"[:1000]})}), reply_to=message)
            if record is not None:
                record["audit-head"] = head
            return reply

        return guarded

    return wrap
