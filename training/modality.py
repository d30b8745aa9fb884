"""The modality interface: what a kind of data (tabular, images, ...) provides, and its registry.

docs/modalities.md describes each member and who calls it; a new kind of data is a
sub-package of ``training/`` implementing :class:`Modality` plus one line in ``REGISTRY``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from training.data_section import DataSection
from training.errors import UnknownModalityError
from training.held_out import HeldOut, LocalScores
from training.model_section import ModelSection
from training.packaging import PackagedModel
from training.report_render import ReportRenderer
from training.site_check import SiteCheck, SitesReview

__all__ = [
    "REGISTRY", "SERVED_KEY", "VAL_KEY", "LocalRound", "LocalSite", "Modality", "Preprocessor", "RoundCharge", "RoundOutcome",
    "StatisticsCharge", "StatisticsReview", "get_modality", "register_modality",
]

#: The spec's ``data.modality`` name -> ``"module:attribute"`` of its :class:`Modality`,
#: imported on first use (so parsing a spec never imports torch).
REGISTRY: dict[str, str] = {
    "tabular": "training.tabular.modality:TABULAR",
    "images": "training.imaging.modality:IMAGING",
}

#: Where a hospital's validation aggregates carry its val aggregates (beside the test ones).
VAL_KEY = "val"
#: Where a multi-class model's validation aggregates carry the confusion matrix (rows: true
#: class) of the labels served under the prior correction, on the hospital's test part.
SERVED_KEY = "served_confusion"

#: Charges the hospital's ledger for one DP statistics release; returns the epsilon spent
#: on statistics in this run so far. Raises the ledger's budget error when it cannot pay.
StatisticsCharge = Callable[[], float]
#: Charges the hospital's ledger for one local round over ``n`` training examples; returns
#: the run's noise multiplier (None without DP) and the round's privacy metrics.
RoundCharge = Callable[[int], tuple[float | None, dict[str, float]]]


class Preprocessor(Protocol):
    """What the statistics round builds and every round carries (tabular encoder, image preprocessor)."""

    def to_json(self) -> str:
        """The preprocessor as the coordinator sends it in a round's config."""
        ...


class LocalSite(Protocol):
    """A hospital's own data, as a modality reads it (``federation.site.Site`` is one)."""

    hospital_id: str
    data_path: Path


@dataclass(frozen=True)
class LocalRound:
    """What the coordinator asks of one local training round."""

    server_round: int
    proximal_mu: float = 0.0
    class_weights: list[float] | None = None
    clip_bound: float | None = None


@dataclass(frozen=True)
class RoundOutcome:
    """A finished local round: new weights and what it cost."""

    state: dict[str, Any]
    metrics: dict[str, float]


@dataclass(frozen=True)
class StatisticsReview:
    """The coordinator's review of the hospitals' statistics (tabular: their vocabularies).

    Attributes:
        event: Names the findings in the log and the progress event.
        artifact: Logged to the run as ``artifact_name``.
        warnings: One line per finding, logged and shown.
        policy: The spec's policy for such findings (shown with the warnings).
        refusal: Why the run is refused (None: it goes on).
    """

    event: str
    artifact_name: str
    artifact: dict[str, Any]
    warnings: list[str]
    policy: str
    refusal: str | None = None


@runtime_checkable
class Modality(Protocol):
    """What a kind of data provides to the federation (``spec`` is an ``ExperimentSpec``).

    Attributes:
        name: The spec's ``data.modality``.
        multiclass_aggregates: Validation aggregates hold one histogram per class.
        uses_gpu: Simulated hospitals share the machine's GPUs by default.
        uses_images: Runs read images (a site policy's ``allow_images`` decides whether its data may be used).
        summary_metrics: The run summary's per-hospital columns: (header, metric key); a
            header's ``{part}`` is the part scored (``val`` or ``held-out``).
        summary_validation: The run summary's validation line: (label, run tag) of each metric.
        unit: What a hospital's rows are (``patients``, ``images``).
    """

    name: str
    multiclass_aggregates: bool
    uses_gpu: bool
    uses_images: bool
    summary_metrics: tuple[tuple[str, str], ...]
    summary_validation: tuple[tuple[str, str], ...]
    unit: str

    @property
    def data_spec(self) -> type[DataSection]:
        """The pydantic model of the spec's ``data:`` section for this kind of data."""
        ...

    @property
    def model_spec(self) -> type[ModelSection]:
        """The pydantic model of the spec's ``model:`` section: its kinds, hyperparameters and DP modes."""
        ...

    # ---- the model ----
    def class_names(self, spec: Any) -> list[str]:
        """The model's classes in output order."""
        ...

    def model_hparams(self, spec: Any) -> dict[str, Any]:
        """Hyperparameters of the spec's model, as :meth:`build_model` passes them on (the training
        section's learning rate and optimiser, and the model section's :meth:`ModelSection.hparams`)."""
        ...

    def build_model(self, spec: Any, preprocessor: Preprocessor) -> Any:
        """A fresh model of the spec's kind, shaped by the federation's preprocessor."""
        ...

    # ---- hospital side ----
    def local_statistics(self, spec: Any, site: LocalSite, charge: StatisticsCharge) -> dict[str, Any]:
        """``{"stats", "fingerprint"}`` of the site's training part: DP-noised and charged first with DP on."""
        ...

    def preprocessor_from_json(self, spec: Any, text: str) -> Preprocessor:
        """The federation's preprocessor, as a round's config carries it."""
        ...

    def train_round(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any],
                    plan: LocalRound, charge: RoundCharge) -> RoundOutcome:
        """Charge the round (``charge``), then train locally with DP-SGD."""
        ...

    def evaluate(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any]) -> dict[str, float]:
        """Metrics of the global model on the site's test part (the same keys at every site)."""
        ...

    def val_scores(self, spec: Any, site: LocalSite, preprocessor: Preprocessor,
                   state: dict[str, Any]) -> tuple[Any, Any] | None:
        """Class probabilities ``(N, K)`` and labels on the site's val part; None without one."""
        ...

    def validation_aggregates(self, spec: Any, site: LocalSite, preprocessor: Preprocessor, state: dict[str, Any],
                              class_scale: list[float] | None) -> dict[str, Any]:
        """Counts-only validation aggregates on the site's test part, overall and per subgroup."""
        ...

    # ---- coordinator side ----
    def class_counts(self, stats: Mapping[str, Any]) -> list[int] | None:
        """A hospital's class counts from its statistics, or None when it sent none."""
        ...

    def review_statistics(self, spec: Any, stats: Mapping[str, Mapping[str, Any]]) -> StatisticsReview | None:
        """The findings about the hospitals' statistics (by hospital), or None to review."""
        ...

    def merge_statistics(self, spec: Any, stats: list[Mapping[str, Any]]) -> Preprocessor:
        """The federation's preprocessor from the hospitals' statistics."""
        ...

    def validation_report(self, spec: Any, parts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The merged validation aggregates (by hospital) and the report built from them."""
        ...

    def report_meta(self, spec: Any, preprocessor: Preprocessor, class_counts: Mapping[str, list[int]]) -> dict[str, Any]:
        """The report metadata this kind of data adds (features, or classes and input)."""
        ...

    # ---- H3: the report's renderer, the packaged model and its scorer, local validation ----
    def check_site(self, spec: Any, hospital: Any) -> SiteCheck:
        """``bioverse data check`` of one hospital with a path: its data loaded and split as a run would."""
        ...

    def review_sites(self, spec: Any, checks: list[SiteCheck]) -> SitesReview:
        """``bioverse data check``'s findings across the checked hospitals (tabular: vocabularies)."""
        ...

    def report_renderer(self) -> ReportRenderer:
        """The validation report's renderer (model card, HTML page, plots) for reports this modality builds."""
        ...

    def package_model(self, directory: Path, model: Any, preprocessor: Preprocessor, kind: str,
                      hparams: dict[str, Any], decision: Any | None = None) -> PackagedModel:
        """Registration: the model's package files written into ``directory``, its MLflow pyfunc,
        signature and input example (``decision``: a ``training.decision.Decision``)."""
        ...

    def load_scorer(self, directory: Path) -> Any:
        """The scorer of a package this modality wrote (``model.json`` names the modality)."""
        ...

    def select_held_out(self, spec: Any, source: Path, tags: dict[str, str], part: str) -> tuple[Any, HeldOut, str]:
        """``registry validate``: the part of a validator's ``source`` the version did not train on
        (``tags``: the version's, naming its training datasets), what it is, and its unit (``patients``)."""
        ...

    def score_held_out(self, spec: Any, data: Any, source: Path, scorer: Any) -> LocalScores:
        """``registry validate``: the selected data scored by the version's ``scorer``, as a validation report."""
        ...


def get_modality(name: str) -> Modality:
    """The registered modality named ``name`` (imported on first use).

    Raises:
        UnknownModalityError: no modality is registered under that name.
    """
    target = REGISTRY.get(name)
    if target is None:
        raise UnknownModalityError(name, sorted(REGISTRY))
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register_modality(name: str, target: str) -> None:
    """Register (or replace) the modality ``name`` as ``"module:attribute"``."""
    REGISTRY[name] = target
