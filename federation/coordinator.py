"""The coordinator's run: federated statistics, strategy rounds, tracking and registration."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from experiments.spec import ExperimentSpec
from experiments.tracking import RunTracker
from federation.audit_heads import AuditHeads, heads_recorder
from federation.checkpoint import Checkpoint, reopen_run, save_checkpoint
from federation.convergence import LOSS_RISING_TAG, loss_rising
from federation.errors import TooFewHospitalsError, VocabularyError
from federation.imbalance import federation_class_weights
from federation.node_identity import NodeIdentities
from federation.progress import ProgressLog
from federation.run_tags import version_tags
from federation.secure_aggregation import SecureAggregationGrid, secure_grid
from federation.selection import RoundSelection
from federation.strategy import HospitalReply, build_strategy, remote_reason, reply_node
from federation.validation_round import validate_final
from training.decision import Decision
from training.modality import Preprocessor, StatisticsReview

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)


class Coordinator:
    """Runs one experiment over a Flower grid and records it in MLflow.

    Args:
        spec: The validated experiment.
        tracker: MLflow tracking for this run.
        progress: Where live progress events go.
        resume_run: A run to resume from its last checkpoint (:mod:`federation.checkpoint`).
    """

    def __init__(self, spec: ExperimentSpec, tracker: RunTracker, progress: ProgressLog, resume_run: str | None = None) -> None:
        self.spec = spec
        self.modality = spec.modality
        self.tracker = tracker
        self.progress = progress
        self.participation: dict[str, dict[str, Any]] = {}
        self.epsilon: dict[str, float] = {}
        self.final_eval: dict[str, dict[str, float]] = {}
        self.fingerprints: dict[str, str] = {}
        self.datasets: dict[str, str] = {}
        self.statistics_epsilon: dict[str, float] = {}
        self.quality_warning: str | None = None
        self.class_counts: dict[str, list[int]] = {}
        self.class_weights: list[float] | None = None
        self.decision: Decision | None = None
        self.timings: list[dict[str, float]] = []
        self._round_started = time.perf_counter()
        self._last_train: list[HospitalReply] = []
        self.train_losses: list[float] = []
        self.loss_warning: str | None = None
        self.selection = RoundSelection(spec)
        self.identities = NodeIdentities()  # node id -> admitted hospital, on a coordinator's SuperLink
        self._noise_warned = False
        self.resume_run = resume_run
        self.checkpoint: Checkpoint | None = None
        self.node_names: dict[int, str] = {}
        self._encoder: Preprocessor | None = None
        self.audit_heads = AuditHeads()  # every hospital's audit-chain heads: anchors outside the hospital

    # ---- RoundObserver ----
    def on_round(self, stage: str, server_round: int, replies: list[HospitalReply], aggregated: dict[str, float]) -> None:
        """Log a round's aggregate and per-hospital metrics, participation and progress."""
        metrics = {f"{stage}_{k.replace('-', '_')}": v for k, v in aggregated.items()}
        for reply in replies:
            for key, value in reply.metrics.items():
                metrics[f"{reply.hospital_id}/{stage}_{key.replace('-', '_')}"] = value
            if stage == "train" and "epsilon" in reply.metrics:
                self.epsilon[reply.hospital_id] = reply.metrics["epsilon"]
            if stage == "evaluate" and "selection-epsilon" in reply.metrics:
                self.selection.epsilon[reply.hospital_id] = reply.metrics["selection-epsilon"]
        if stage == "evaluate":  # the last evaluate round's: a hospital gone since shows none
            self.final_eval = {r.hospital_id: r.metrics for r in replies if r.status == "ok"}
        round_record = self.participation.setdefault(str(server_round), {})
        round_record[stage] = {r.hospital_id: {"status": r.status, "reason": r.reason} for r in replies}
        ok = [r.hospital_id for r in replies if r.status == "ok"]
        metrics[f"{stage}_hospitals"] = float(len(ok))
        for reply in replies:
            self.audit_heads.add(reply.hospital_id, stage, server_round, reply.audit_head, reply.status)
        self.audit_heads.save(self.tracker)
        if stage == "evaluate":
            now = time.perf_counter()
            self.timings.append({
                "round": server_round,
                "wall": now - self._round_started,
                "train_seconds": sum(r.metrics.get("train-seconds", 0.0) for r in self._last_train),
                "handler_seconds": sum(r.metrics.get("handler-seconds", 0.0) for r in self._last_train + replies),
            })
            metrics["round_seconds"] = now - self._round_started
            self._round_started = now
            if self.epsilon:
                metrics["epsilon_max"] = max(self.epsilon.values())
        else:
            self._last_train = [r for r in replies if r.status == "ok"]
        self.tracker.log_metrics(metrics, step=server_round)
        self.progress.emit(
            stage,
            round=server_round,
            rounds=self.spec.training.rounds,
            hospitals={r.hospital_id: r.status for r in replies},
            reasons={r.hospital_id: r.reason for r in replies if r.reason},
            metrics=aggregated,
            epsilon=dict(self.epsilon),
        )
        if stage == "train":
            self._watch_loss(server_round, aggregated)

    def _watch_loss(self, server_round: int, aggregated: dict[str, float]) -> None:
        """Warn once (log, progress event, MLflow tag) when the federated training loss rises
        over the rounds (:func:`federation.convergence.loss_rising`)."""
        self.train_losses.append(float(aggregated.get("train-loss", math.nan)))
        warning = loss_rising(self.train_losses)
        if warning is None or self.loss_warning is not None:
            return
        hint = " (with DP: see docs/dp-training.md)" if self.spec.privacy.enabled else ""
        self.loss_warning = warning
        log.warning("round %d: %s%s", server_round, warning, hint)
        self.tracker.set_tags({LOSS_RISING_TAG: warning})
        self.progress.emit("warning", round=server_round, kind="loss_rising", message=warning + hint)

    def on_selection(self, server_round: int, parts: dict[str, dict[str, Any]], arrays: ArrayRecord | None) -> bool:
        """Merge a round's val releases, log ``val_<metric>`` (pooled and per hospital), keep
        the best round's model; True when early stopping ends training now."""
        choice = self.selection.observe(server_round, parts, arrays)
        metric = self.selection.metric
        if choice.value is not None:
            metrics = {f"val_{metric}": choice.value}
            metrics.update({f"{h}/val_{metric}": v for h, v in choice.hospitals.items() if v is not None})
            if choice.noise_sd is not None:
                metrics[f"val_{metric}_noise_sd"] = choice.noise_sd
            self.tracker.log_metrics(metrics, step=server_round)
        warning = self.selection.noise_warning()
        if warning is not None and not self._noise_warned:
            log.warning("model selection: %s", warning)
            self._noise_warned = True
        else:
            warning = None  # said once
        if parts:
            s = self.selection.stopping
            self.progress.emit("selection", round=server_round, rounds=self.spec.training.rounds, metric=metric,
                               value=choice.value, noise_sd=choice.noise_sd, hospitals=sorted(parts),
                               best_round=s.best_round, best_value=s.best_value, improved=choice.improved,
                               stale=s.stale, patience=s.patience, stop=self.selection.should_stop,
                               warning=warning)
        return self.selection.should_stop

    def on_round_end(self, server_round: int, strategy: Any, arrays: ArrayRecord | None) -> None:
        """Checkpoint the completed round to the run (:mod:`federation.checkpoint`)."""
        save_checkpoint(self, strategy, server_round, arrays, self._encoder)  # type: ignore[arg-type]

    def on_round_start(self, server_round: int) -> None:
        """Record that a round is starting (hospitals charge it as they receive it) and renew
        the run's lease for the round."""
        self.tracker.log_metrics({"round_started": float(server_round)}, step=server_round)
        self.tracker.renew_lease(self._lease())

    def _lease(self) -> float:
        """How long the coordinator may go without a sign of life: a train and an evaluate
        round, each up to the round timeout, and a margin."""
        return 2 * self.spec.strategy.round_timeout + 120

    # ---- the run ----
    def _wait_for_hospitals(self, grid: Grid) -> list[int]:
        expected = len(self.spec.data.hospitals)
        deadline = time.monotonic() + self.spec.strategy.join_timeout
        hint_at = time.monotonic() + 10
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= expected or time.monotonic() > deadline:
                break
            if hint_at and time.monotonic() > hint_at:  # plain `flwr run .` simulates 2 SuperNodes by default
                log.warning("%d of %d hospitals connected; waiting up to %.0f s (with `flwr run .`: --federation-config "
                            "num-supernodes=%d)", len(nodes), expected, self.spec.strategy.join_timeout, expected)
                hint_at = 0.0
            time.sleep(0.2)
        if len(nodes) < self.spec.strategy.min_hospitals:
            raise TooFewHospitalsError(f"{len(nodes)} hospitals connected within {self.spec.strategy.join_timeout:.0f} s, "
                                       f"the minimum is {self.spec.strategy.min_hospitals}")
        return nodes

    def _federated_encoder(self, grid: Grid, nodes: list[int], run_key: str) -> tuple[Preprocessor, dict[int, str]]:
        messages = [Message(RecordDict({"config": ConfigRecord({"run-key": run_key})}), dst_node_id=n,
                            message_type=MessageType.QUERY) for n in nodes]
        replies = grid.send_and_receive(messages, timeout=self.spec.strategy.round_timeout)
        stats: dict[str, dict[str, Any]] = {}
        names, outcome = {}, {}
        for msg in replies:
            node = reply_node(msg, {m.metadata.message_id: m.metadata.dst_node_id for m in messages})
            if msg.has_error():
                outcome[f"node-{node}"] = {"status": "failed", "reason": remote_reason(msg.error.reason)}
                continue
            site = msg.content["site"]
            hospital = str(site["hospital-id"])
            impostor = self.identities.problem(node, hospital)
            if impostor:  # its statistics are not merged, and it is asked nothing more
                outcome[f"node-{node}"] = {"status": "refused", "reason": f"the coordinator refuses: {impostor}"}
                nodes.remove(node)
                continue
            names[node] = hospital
            outcome[hospital] = {"status": str(site["status"]), "reason": remote_reason(str(site["reason"]))}
            self.audit_heads.add(hospital, "statistics", 0, str(site.get("audit-head", "") or ""), str(site["status"]))
            if site["status"] == "ok":
                self._keep_statistics(hospital, msg.content["statistics"], stats)
        self.participation["0"] = {"statistics": outcome}
        self.audit_heads.save(self.tracker)
        self.progress.emit("statistics", hospitals={h: o["status"] for h, o in outcome.items()},
                           reasons={h: o["reason"] for h, o in outcome.items() if o["reason"]})
        if len(stats) < self.spec.strategy.min_hospitals:
            detail = "; ".join(f"{h}: {o['reason']}" for h, o in outcome.items() if o["status"] != "ok")
            raise TooFewHospitalsError(
                f"{len(stats)} hospitals sent statistics, the minimum is {self.spec.strategy.min_hospitals}"
                + (f" ({detail})" if detail else "")
            )
        self._review(self.modality.review_statistics(self.spec, stats))
        return self.modality.merge_statistics(self.spec, list(stats.values())), names

    def _keep_statistics(self, hospital: str, record: Any, stats: dict[str, dict[str, Any]]) -> None:
        """Keep a hospital's statistics, fingerprint, dataset, statistics epsilon and class counts."""
        found = stats[hospital] = json.loads(str(record["stats"]))
        self.fingerprints[hospital] = str(record["fingerprint"])
        if "dataset" in record:
            self.datasets[hospital] = str(record["dataset"])
        if "dp" in found:
            self.statistics_epsilon[hospital] = float(found["dp"]["spent"])
        counts = self.modality.class_counts(found)  # DP-noised with DP on
        if counts is not None:
            self.class_counts[hospital] = counts

    def _review(self, review: StatisticsReview | None) -> None:
        """The modality's findings about the statistics: logged to the run, shown as
        warnings, and the run refused when the spec's policy says so."""
        if review is None:
            return
        self.tracker.log_dict(review.artifact, review.artifact_name)
        if not review.warnings:
            return
        for line in review.warnings:
            log.warning("%s: %s", review.event, line)
        self.progress.emit(review.event, policy=review.policy, findings=review.warnings)
        if review.refusal is not None:
            raise VocabularyError(review.refusal)

    def run(self, grid: Grid) -> dict[str, Any]:
        """Run the experiment end to end; returns the summary (run id, version...).

        The MLflow run ends FAILED and nothing is registered if anything goes wrong.
        """
        spec = self.spec
        started = time.perf_counter()
        self.tracker.lease_seconds = spec.strategy.join_timeout + self._lease()
        run_id = self.tracker.start(spec) if self.resume_run is None else self.resume_run
        try:
            if self.resume_run is not None:
                self.checkpoint = reopen_run(self.tracker, spec, self.resume_run)
                self.audit_heads.resume(self.tracker.tracking_uri, run_id, self.checkpoint.state.get("audit_heads"))
            self.progress.emit("start", run_id=run_id, experiment=spec.name, rounds=spec.training.rounds,
                               hospitals=[h.id for h in spec.data.hospitals],
                               resumed_after=self.checkpoint.server_round if self.checkpoint else None)
            nodes = self._wait_for_hospitals(grid)
            if self.checkpoint is None:
                encoder, names = self._federated_encoder(grid, nodes, run_id)
                self._log_statistics_release()
            else:  # the statistics round's results come from the checkpoint: no new release
                encoder, names = self.checkpoint.restore_coordinator(self), {}
            self._encoder = encoder
            setup_seconds = time.perf_counter() - started
            model = self.modality.build_model(spec, encoder)
            strategy = build_strategy(spec.strategy, observer=self, min_available=spec.strategy.min_hospitals,
                                      identities=self.identities,
                                      learning_rate=spec.training.learning_rate)
            strategy.node_names.update(names)  # type: ignore[attr-defined]
            self.node_names = strategy.node_names  # type: ignore[attr-defined]
            self.class_weights = federation_class_weights(spec, self.class_counts)
            config = ConfigRecord({"encoder": encoder.to_json(), "run-key": run_id,
                                   **({"class-weights": json.dumps(self.class_weights)} if self.class_weights else {})})
            if self.class_weights:
                self.tracker.set_tags({"class_weights": ",".join(f"{w:.4g}" for w in self.class_weights)})
            self._round_started = time.perf_counter()
            initial = ArrayRecord(model.state_dict()) if self.checkpoint is None else self.checkpoint.restore_strategy(strategy)
            result = strategy.start(
                grid=self._training_grid(grid),
                initial_arrays=initial,
                num_rounds=spec.training.rounds,
                timeout=spec.strategy.round_timeout,
                train_config=config,
                evaluate_config=ConfigRecord(dict(config)),
            )
            final = result.arrays if len(result.arrays) else initial  # a resumed run with no round left: its checkpoint's
            model.load_state_dict(self.selection.best_state if self.selection.chosen else final.to_torch_state_dict())
            log.info("model selection: %s", self.selection.reason())
            self.tracker.set_tags(self.selection.tags())
            report_tags = self._validate(grid, sorted(set(nodes) | set(grid.get_node_ids())), encoder, model, run_id)
            summary = self._summary(run_id, started, setup_seconds)
            summary["validation"] = report_tags
            summary["selection"] = self.selection.summary()
            if self.decision is not None:
                summary["decision"] = json.loads(self.decision.to_json())
            candidate = self.quality_warning is None or spec.registry.candidate_despite_warning
            if self.quality_warning is not None:
                summary["quality_warning"] = self.quality_warning
                summary["candidate"] = candidate
            self.tracker.log_dict(self.participation, "participation.json")
            self.tracker.log_dict(summary, "summary.json")
            summary["model_version"] = self.tracker.register(
                model=model,
                encoder=encoder,
                kind=spec.model.kind,
                hparams=self.modality.model_hparams(spec),
                model_name=spec.model_name,
                tags={**version_tags(spec, run_id, self.epsilon, self.fingerprints, self.datasets), **self.selection.tags(),
                      **report_tags},
                candidate=candidate,
                decision=self.decision,
                modality=self.modality,
            )
            self.tracker.log_metrics({"wall_seconds": time.perf_counter() - started}, step=spec.training.rounds)
            self.tracker.end("FINISHED")
        except BaseException as err:
            log.exception("run %s failed", run_id)
            with contextlib.suppress(Exception):  # heads of a round that failed midway are kept too
                self.audit_heads.save(self.tracker)
            self.tracker.end("FAILED")
            self.progress.emit("error", run_id=run_id, message=str(err) or type(err).__name__)
            raise
        self.progress.emit("done", **summary)
        return summary

    def _training_grid(self, grid: Grid) -> Grid:
        """SecAgg+ when the spec asks (:mod:`federation.secure_aggregation`), keeping the heads
        of its training replies even when a round fails before the strategy reads them."""
        training = secure_grid(grid, self.spec, self.class_counts)
        if isinstance(training, SecureAggregationGrid):
            training.recorder = heads_recorder(self.audit_heads, self.identities)
        return training

    def _log_statistics_release(self) -> None:
        """What each hospital's statistics release cost (its ledger's ``<run>/statistics``
        entry) and which dataset each hospital's budget belongs to, on the run."""
        metrics = {f"{h}/statistics_epsilon": e for h, e in self.statistics_epsilon.items()}
        if metrics:
            self.tracker.log_metrics(metrics, step=0)
        if self.datasets:
            self.tracker.set_tags({f"dataset.{h}": d for h, d in sorted(self.datasets.items())})

    def _validate(self, grid: Grid, nodes: list[int], encoder: Preprocessor, model: Any, run_id: str) -> dict[str, str]:
        """The clinical validation report of the final model (:func:`federation.validation_round.validate_final`)."""
        return validate_final(self, grid, nodes, encoder, model, run_id)

    def _summary(self, run_id: str, started: float, setup_seconds: float) -> dict[str, Any]:
        spec = self.spec
        return {
            "run_id": run_id,
            "experiment": spec.name,
            "registered_model": spec.model_name,
            "modality": spec.data.modality,
            "rounds": spec.training.rounds,
            "rounds_run": self.selection.stopping.last_round,
            "strategy": spec.strategy.name,
            "epsilon": dict(sorted(self.epsilon.items())),
            "statistics_epsilon": dict(sorted(self.statistics_epsilon.items())),
            "selection_epsilon": dict(sorted(self.selection.epsilon.items())),
            "delta": spec.privacy.target_delta if spec.privacy.enabled else 0.0,
            "hospital_metrics": dict(sorted(self.final_eval.items())),
            **({"class_counts": dict(sorted(self.class_counts.items()))} if self.class_counts else {}),
            **({"class_weights": self.class_weights} if self.class_weights else {}),
            **({"loss_rising": self.loss_warning} if self.loss_warning else {}),
            "participation": self.participation,
            "seconds": {"total": time.perf_counter() - started, "setup": setup_seconds, "rounds": self.timings},
            "tracking_uri": self.tracker.tracking_uri,
        }
