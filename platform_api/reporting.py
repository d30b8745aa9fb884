"""Live progress and the final summary of a federated run, for the terminal (rich)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from experiments.spec import ExperimentSpec
from training.modality import get_modality

__all__ = ["RunReporter", "render_summary"]


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None or value != value else pattern.format(value)


class RunReporter:
    """Prints round n of N, who answered, loss, AUROC and epsilon as events arrive."""

    def __init__(self, console: Console, spec: ExperimentSpec, quiet: bool = False) -> None:
        self.console = console
        self.spec = spec
        self.quiet = quiet
        self.status: Status | None = None
        self._train: dict[str, Any] = {}

    def __enter__(self) -> RunReporter:
        if not self.quiet:
            self.status = self.console.status("Starting Flower (SuperLink, simulation runtime)...")
            self.status.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.status:
            self.status.stop()

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def _absent(self, event: dict[str, Any]) -> None:
        for hospital, status in sorted(event.get("hospitals", {}).items()):
            if status != "ok":
                reason = event.get("reasons", {}).get(hospital, "")
                self._say(f"    [yellow]{hospital} {status}[/]: {reason}")

    def on_event(self, event: dict[str, Any]) -> None:
        """Handle one progress event from the coordinator."""
        kind = event["event"]
        if kind == "start":
            self._say(f"Run [bold]{event['run_id']}[/] of {event['experiment']}: "
                      f"{len(event['hospitals'])} hospitals, {event['rounds']} rounds")
            if self.spec.defaulted:
                chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.spec.defaulted.items())
                self._say(f"  DP defaults for what the spec leaves out: {escape(chosen)} (docs/dp-training.md)")
            if self.status:
                self.status.update("Waiting for hospitals' federated statistics...")
        elif kind == "statistics":
            ok = sum(1 for s in event["hospitals"].values() if s == "ok")
            self._say(f"  federated preprocessing: statistics from {ok}/{len(event['hospitals'])} hospitals")
            self._absent(event)
            if self.status:
                self.status.update("Round 1: training...")
        elif kind == "vocabulary":
            verb = "refused" if event.get("policy") == "refuse" else "warning"
            for line in event.get("findings", []):
                self.console.print(f"    [yellow]vocabulary {verb}[/]: {escape(line)}", highlight=False)
        elif kind == "train":
            self._train = event
        elif kind == "evaluate":
            train = self._train.get("metrics", {})
            trained = sum(1 for s in self._train.get("hospitals", {}).values() if s == "ok")
            total = len(self._train.get("hospitals", {})) or len(event["hospitals"])
            eps = max(event.get("epsilon", {}).values(), default=None)
            # image classifiers: accuracy (a risk model's Brier and AUROC say more than accuracy at 0.5)
            # on the val part when hospitals have one (keys val-*), else on the held-out test part
            metrics = event["metrics"]
            part = "val " if any(k.startswith("val-") for k in metrics) else ""
            metrics = {k.removeprefix("val-"): v for k, v in metrics.items()} if part else metrics
            accuracy = metrics.get("accuracy") if "brier" not in metrics else None
            auroc = metrics.get("auroc")
            self._say(
                f"  round {event['round']}/{event['rounds']}  hospitals {trained}/{total}  "
                f"loss {_fmt(train.get('train-loss'))}  "
                + (f"{part}accuracy {_fmt(accuracy)}  " if accuracy is not None else "")
                + (f"{part}AUROC {_fmt(auroc)}  " if auroc is not None else "")
                + f"epsilon max {_fmt(eps, '{:.2f}')}"
            )
            self._absent(self._train)
            if self.status and event["round"] < event["rounds"]:
                self.status.update(f"Round {event['round'] + 1}: training...")
            elif self.status:
                self.status.update("Validation report: hospitals score their held-out patients...")
        elif kind == "warning":
            self.console.print(f"    [bold yellow]warning[/]: {escape(str(event.get('message', '')))}", highlight=False)
        elif kind == "selection":
            self._selection(event)
        elif kind == "validation":
            ok = sum(1 for s in event["hospitals"].values() if s == "ok")
            self._say(f"  validation report: aggregates from {ok}/{len(event['hospitals'])} hospitals")
            self._absent(event)
            if self.status:
                self.status.update("Registering the global model...")


    def _selection(self, event: dict[str, Any]) -> None:
        """One line per round: the pooled val metric and the best round so far; early stopping."""
        metric = str(event["metric"]).replace("_", " ")
        best = f"best round {event['best_round']} ({_fmt(event.get('best_value'), '{:.4f}')})" \
            if event.get("best_round") is not None else "no best round yet"
        noise = f" ± {event['noise_sd']:.4f} (DP noise sd)" if event.get("noise_sd") is not None else ""
        self._say(f"    val {metric} {_fmt(event.get('value'), '{:.4f}')}{noise} from {len(event['hospitals'])} hospitals, "
                  f"{best}")
        if event.get("warning"):
            self._say(f"    [yellow]warning[/]: {event['warning']}")
        if event.get("stop"):
            self._say(f"  early stopping after round {event['round']}/{event['rounds']}: {event['stale']} rounds without "
                      f"improvement (patience {event['patience']}); round {event['best_round']}'s model is registered")
            if self.status:
                self.status.update("Validation report: hospitals score their held-out patients...")


def render_summary(console: Console, summary: dict[str, Any], demo: bool = False) -> None:
    """Per-hospital held-out metrics and privacy spent, then where to find the model."""
    run = summary.get("rounds_run", summary["rounds"])
    rounds = f"{run} of {summary['rounds']} rounds" if run != summary["rounds"] else f"{run} rounds"
    table = Table(title=f"{summary['experiment']}: {rounds}, {summary['strategy']}")
    # the modality that trained the run says which metrics its hospitals report (a summary
    # written before summaries named it: class counts meant an image classifier)
    modality = get_modality(summary.get("modality", "images" if "class_counts" in summary else "tabular"))
    metrics = modality.summary_metrics
    # the last round's metrics: on the val part when hospitals have one (the test part is the report's)
    part = "val" if any(k.startswith("val-") for m in summary["hospital_metrics"].values() for k in m) else "held-out"
    prefix = "val-" if part == "val" else ""
    columns = ("hospital", *(header.format(part=part) for header, _ in metrics), "epsilon spent")
    for column in columns:
        table.add_column(column, justify="left" if column == "hospital" else "right")
    hospitals = sorted(set(summary["hospital_metrics"]) | set(summary["epsilon"]))
    for hospital in hospitals:
        m = summary["hospital_metrics"].get(hospital, {})
        table.add_row(hospital, *(_fmt(m.get(prefix + key)) for _, key in metrics), _fmt(summary["epsilon"].get(hospital), "{:.3f}"))
    console.print(table)
    eps = max(summary["epsilon"].values(), default=None)
    privacy = f"epsilon {eps:.3f}, delta {summary['delta']:g}" if eps is not None else "no differential privacy"
    statistics = max(summary.get("statistics_epsilon", {}).values(), default=None)
    if statistics is not None:
        privacy += f" in training + epsilon {statistics:.3f} for the statistics round (both charged to the ledgers)"
    selection_eps = max(summary.get("selection_epsilon", {}).values(), default=None)
    if selection_eps is not None:
        privacy += f" + epsilon {selection_eps:.3f} for the val releases of model selection"
    console.print(f"Registered [bold]{summary['registered_model']}[/] version [bold]{summary['model_version']}[/] "
                  f"(run {summary['run_id']}); privacy: {privacy}", highlight=False)
    selection = summary.get("selection")
    if selection:
        console.print(f"Model selection: {selection['reason']}", highlight=False)
        if selection.get("warning"):
            console.print(f"Model selection warning: {selection['warning']}", highlight=False, markup=False,
                          style="yellow")
    validation = summary.get("validation", {})
    if validation.get("validation.status") == "complete":
        scores = ", ".join(f"{label} {validation.get(tag, 'n/a')}" for label, tag in modality.summary_validation)
        console.print(f"Validation report (pending clinical review): {scores} on {validation['validation.n']} held-out "
                      f"{modality.unit}; report sha256 {validation['validation.report_sha256'][:12]}", highlight=False)
    elif validation:
        console.print("Validation report: missing (no hospital returned aggregates); the version cannot be approved",
                      highlight=False)
    decision = summary.get("decision")
    if decision:
        at = ", ".join(f"{k.removeprefix('validation.decision_').replace('_', ' ')} {v}" for k, v in validation.items()
                       if k.startswith("validation.decision_"))
        rule = (f"threshold {decision['threshold']:.4g}" if decision.get("threshold") is not None
                else "prior-corrected argmax")
        weights = summary.get("class_weights")
        console.print(f"Decision: {rule} by {decision['rule']} ({decision['source']})"
                      + (f"; on the test part: {at}" if at else "")
                      + (f"; class weights {', '.join(f'{w:.3g}' for w in weights)}" if weights else ""),
                      highlight=False, markup=False)
    if summary.get("quality_warning"):
        alias = ("it was given the candidate alias anyway (registry.candidate_despite_warning)" if summary.get("candidate")
                 else "it was not given the candidate alias")
        console.print(f"QUALITY WARNING: {summary['quality_warning']}; {alias}", highlight=False, markup=False,
                      style="bold yellow")
    if summary.get("loss_rising"):
        console.print(f"TRAINING WARNING: {summary['loss_rising']} (docs/dp-training.md)", highlight=False, markup=False,
                      style="bold yellow")
    seconds = summary["seconds"]
    wall = f"{seconds['wall']:.1f} s wall, " if "wall" in seconds else ""
    console.print(f"Time: {wall}{seconds['total']:.1f} s in the coordinator ({seconds['setup']:.1f} s to the first round)",
                  highlight=False)
    uri = summary["tracking_uri"]
    if uri.startswith("http"):
        console.print(f"See it in the MLflow UI: {uri}", highlight=False)
    else:
        console.print(f"See it in the MLflow UI: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)",
                      highlight=False, soft_wrap=True)
