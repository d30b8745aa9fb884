"""Model quality against epsilon on messy synthetic hospitals, against the pooled model (issue 11).

Tabular: 4 hospitals (one spells categories its own way, one writes a missing cholesterol as
0, every file has a fixed train/val/test column); logistic and MLP federated at epsilon 1, 3,
8 and without DP, through the platform's launcher (`bioverse experiment run`'s entry point,
Flower simulation). Baseline, same run: a pooled scikit-learn logistic regression on the
same training rows (cleaned: spellings and the missing code undone), scored on the same
held-out rows. Images: 3 hospitals x 200 training images, 90/10 classes (MedMNIST ``.npz``), a small
CNN federated at the same epsilons; baseline: a plain PyTorch loop over the pooled training
images, which also gives the wall-time comparison (time to the first round, per round).

Every federated number is the registered version scored on its hospitals' held-out rows
with the platform's report functions (`training.tabular.validation.local_report`); the pooled
models are scored by the same functions. Issue-11 spec fields are used where the spec has
them (split column, val part, class weights, threshold); ``--plain`` leaves them out.

Usage: python benchmarks/quality_vs_epsilon.py [--quick] [--plain] [--resnet]
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from _results import machine, table, write_section
from experiments.spec import ExperimentSpec, parse_spec
from experiments.spec_sections import TrainingSpec, ValidationSpec
from federation.launcher import LaunchOptions, run_experiment
from training.imaging.data import load_image_split
from training.imaging.local import predict_vision
from training.imaging.spec import ImageDataSpec
from training.imaging.synth import synthesize_image_hospitals
from training.imaging.vision import build_vision_model
from training.tabular.data import HospitalDataModule
from training.tabular.spec import DataSpec
from training.tabular.synth import (
    FEATURE_RANGES,
    FEATURES_CATEGORICAL,
    FEATURES_NUMERIC,
    LABEL,
    PATIENT_ID,
    Messiness,
    synthesize_hospitals,
)
from training.tabular.validation import local_report

EPSILONS: list[float | None] = [1.0, 3.0, 8.0, None]
SPLIT = "split"
MESSY = Messiness(respell_site=2, split_column=SPLIT, missing_code_site=3)
CLASSES = ("normal", "lesion")


def _has(model: type, field: str) -> bool:
    return field in model.model_fields


def tabular_spec(paths: list[Path], kind: str, epsilon: float | None, rounds: int | None, plain: bool) -> dict[str, Any]:
    """The spec a data scientist would write for the messy hospitals (issue-11 fields where they exist)."""
    data: dict[str, Any] = {"patient_id": PATIENT_ID, "label": LABEL, "numeric": list(FEATURES_NUMERIC),
                            "categorical": list(FEATURES_CATEGORICAL),
                            "ranges": {c: list(r) for c, r in FEATURE_RANGES.items()},
                            "hospitals": [{"id": p.stem, "path": str(p)} for p in paths]}
    spec: dict[str, Any] = {
        "name": f"q-{kind}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}", "data": data,
        "model": {"kind": kind, "hidden": [32, 16]} if kind == "mlp" else {"kind": kind},
        "strategy": {"name": "fedavg", "min_hospitals": len(paths)},
        "training": {} if rounds is None else {"rounds": rounds},
        "privacy": {"enabled": False} if epsilon is None else {"target_epsilon": epsilon, "hospital_budget": 1000.0},
        "validation": {"thresholds": [0.1, 0.2, 0.3, 0.5]},
    }
    if not plain:
        if _has(DataSpec, "split_column"):
            data["split_column"] = SPLIT
        if _has(DataSpec, "missing_codes"):
            data["missing_codes"] = {MESSY.missing_code_column: [MESSY.missing_code]}
        _issue11_fields(spec)
    return spec


def _issue11_fields(spec: dict[str, Any]) -> None:
    if _has(TrainingSpec, "class_weights"):
        spec["training"]["class_weights"] = "balanced"
    if _has(ValidationSpec, "threshold"):
        spec.setdefault("validation", {})["threshold"] = {"rule": "youden"}


def image_spec(paths: list[Path], kind: str, epsilon: float | None, rounds: int | None, plain: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"q-{kind}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}",
        "data": {"modality": "images", "classes": list(CLASSES), "image_size": 28 if kind == "cnn" else 32, "channels": 1,
                 "augment": None, "hospitals": [{"id": p.stem, "path": str(p)} for p in paths]},
        "model": {"kind": kind, **({"width": 16} if kind == "resnet18" else {})},
        "strategy": {"name": "fedavg", "min_hospitals": len(paths)},
        "training": {"batch_size": 32, **({} if rounds is None else {"rounds": rounds})},
        "privacy": {"enabled": False} if epsilon is None else {"target_epsilon": epsilon, "hospital_budget": 1000.0},
    }
    if not plain:
        _issue11_fields(spec)
    return spec


def tabular_held_out(spec: ExperimentSpec) -> list[Any]:
    """Each hospital's split, as its ClientApp makes it (the same arguments)."""
    data = spec.data
    assert isinstance(data, DataSpec)
    accepted = inspect.signature(HospitalDataModule).parameters
    extra = {k: getattr(data, k) for k in ("split_column", "val_fraction") if k in accepted and _has(DataSpec, k)}
    return [HospitalDataModule(h.path, data.contract, spec.training.batch_size, data.test_fraction, spec.seed, **extra).split
            for h in data.hospitals]


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """What a data scientist holding all rows would clean: spellings and the missing code."""
    frame = frame.copy()
    def clean(value: Any) -> Any:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return np.nan
        text = str(value).strip()
        try:
            return f"{float(text):g}"
        except ValueError:
            return text

    for column in FEATURES_CATEGORICAL:
        frame[column] = [clean(v) for v in frame[column]]
    frame.loc[frame[MESSY.missing_code_column] == MESSY.missing_code, MESSY.missing_code_column] = np.nan
    return frame


def pooled_logistic(splits: list[Any]) -> dict[str, Any]:
    """scikit-learn logistic regression on all hospitals' training rows (cleaned), scored on their held-out rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train = _canonical(pd.concat([s.train for s in splits], ignore_index=True))
    test = _canonical(pd.concat([s.test for s in splits], ignore_index=True))
    features = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), list(FEATURES_NUMERIC)),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")),
         list(FEATURES_CATEGORICAL)),
    ])
    model = make_pipeline(features, LogisticRegression(max_iter=2000))
    model.fit(train[list(FEATURES_NUMERIC + FEATURES_CATEGORICAL)], train[LABEL].astype(int))
    risk_train = model.predict_proba(train[list(FEATURES_NUMERIC + FEATURES_CATEGORICAL)])[:, 1]
    threshold = _youden(risk_train, train[LABEL].to_numpy(int))
    risk = model.predict_proba(test[list(FEATURES_NUMERIC + FEATURES_CATEGORICAL)])[:, 1]
    return _binary_metrics(risk, test[LABEL].to_numpy(int), risk >= threshold, f"youden {threshold:.2f} on training rows")


def _youden(risk: np.ndarray, label: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, cut = roc_curve(label, risk)
    return float(np.clip(cut[int(np.argmax(tpr - fpr))], 1e-6, 1 - 1e-6))


def _binary_metrics(risk: np.ndarray, label: np.ndarray, decided: np.ndarray | None, rule: str | None) -> dict[str, Any]:
    """AUROC, calibration slope (the platform's report functions) and balanced accuracy at
    risk 0.5 and of the served decision (``decided``, by the version's own rule)."""
    risk = np.clip(np.asarray(risk, dtype=float), 0.0, 1.0)
    report = local_report(risk, label, None, [0.5])["overall"]

    def balanced(predicted: np.ndarray) -> tuple[float, bool]:
        predicted = np.asarray(predicted, dtype=bool)
        sens = predicted[label == 1].mean() if (label == 1).any() else 0.0
        spec = (~predicted[label == 0]).mean() if (label == 0).any() else 0.0
        return float((sens + spec) / 2), bool(predicted.all() or (~predicted).all())

    ba, one = balanced(risk >= 0.5)
    out = {"auroc": report["auroc"], "slope": report["calibration_slope"], "ba": ba, "one_class": one,
           "n": int(len(label)), "positives": int(label.sum())}
    if decided is not None:
        out["ba_t"], out["one_class_t"] = balanced(decided)
        out["rule"] = rule
    return out


def _served(package: Any, scores: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The version's served decision (the rule stored in its package, issue 11), if it has one."""
    decision = getattr(package, "decision", None) or getattr(getattr(package, "scorer", None), "decision", None)
    if decision is None:
        return None, None
    decided = np.asarray(decision.labels(scores)) == 1 if scores.ndim == 2 else np.asarray(decision.decide(scores)).astype(bool)
    return decided, decision.rule + (f" {decision.threshold:.2f}" if decision.threshold is not None else "")


def federate(spec_dict: dict[str, Any], work: Path) -> tuple[dict[str, Any], Any, dict[str, float], float]:
    """Run the spec through the launcher; returns the summary, the loaded pyfunc, event marks and wall time."""
    spec = parse_spec(spec_dict)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    marks: dict[str, float] = {}
    started = time.perf_counter()

    def on_event(event: dict[str, Any]) -> None:
        marks.setdefault(event["event"], time.perf_counter() - started)

    summary = run_experiment(spec, LaunchOptions(engine="simulation", run_dir=work / spec.name, tracking_uri=uri,
                                                 ledger_dir=work / "ledgers", timeout=1800), on_event)
    wall = time.perf_counter() - started
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{spec.model_name}/{summary['model_version']}")
    return summary, model.unwrap_python_model(), marks, wall


def run_tabular(work: Path, kinds: list[str], epsilons: list[float | None], rounds: int | None, patients: int,
                plain: bool) -> tuple[list[list[str]], dict[str, Any]]:
    written = synthesize_hospitals(n_hospitals=4, n_patients=patients, seed=11, out_dir=work / "tabular", messiness=MESSY)
    paths = [h.path for h in written]
    splits = tabular_held_out(parse_spec(tabular_spec(paths, "logistic", None, rounds, plain)))
    pooled = pooled_logistic(splits)
    test = pd.concat([s.test for s in splits], ignore_index=True)
    rows = [_row("pooled logistic (sklearn, cleaned rows; baseline)", "none", pooled, None)]
    results: dict[str, Any] = {"pooled": pooled, "runs": {}}
    for kind in kinds:
        for epsilon in epsilons:
            spec_dict = tabular_spec(paths, kind, epsilon, rounds, plain)
            summary, package, _, wall = federate(spec_dict, work)
            risk = package.predict(None, test)["risk"].to_numpy()
            metrics = _binary_metrics(risk, test[LABEL].to_numpy(int), *_served(package, risk))
            metrics["report_auroc"] = float(summary["validation"].get("validation.auroc", "nan"))
            metrics["epsilon"] = max(summary["epsilon"].values()) if summary["epsilon"] else None
            metrics["wall"] = wall
            results["runs"][(kind, epsilon)] = metrics
            rows.append(_row(f"federated {kind}", _eps(epsilon, metrics["epsilon"]), metrics, pooled))
            print(" | ".join(rows[-1]), file=sys.stderr)
    return rows, results


def _rounds(by_epsilon: dict[float | None, int]) -> str:
    values = set(by_epsilon.values())
    if len(values) == 1:
        return f"{values.pop()} rounds"
    return ", ".join(f"{r} rounds {'without DP' if e is None else 'with DP'}" for e, r in by_epsilon.items())


def _eps(target: float | None, spent: float | None) -> str:
    return "none" if target is None else f"{target:g} (spent {spent:.2f})" if spent is not None else f"{target:g}"


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _row(name: str, eps: str, m: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    gap = "—" if base is None else f"{m['auroc'] - base['auroc']:+.3f}"
    at_t = "—" if "ba_t" not in m else f"{m['ba_t']:.3f} ({m['rule']})" + (" one class" if m["one_class_t"] else "")
    return [name, eps, _f(m["auroc"]), gap, _f(m["slope"], 2), f"{m['ba']:.3f}" + (" (one class)" if m["one_class"] else ""), at_t]


# ---------------------------------------------------------------- images


def _plain_loop(kind: str, width: int | None, images: np.ndarray, labels: np.ndarray, mean: list[float], std: list[float],
                epochs: int, batch: int, lr: float) -> tuple[nn.Module, list[float]]:
    """The same training as one hand-written PyTorch loop over the pooled images; seconds per epoch."""
    torch.manual_seed(0)
    model = build_vision_model(kind, images.shape[1], len(CLASSES), lr=lr, **({"width": width} if width else {}))
    x = (torch.from_numpy(images).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    y = torch.from_numpy(labels).long()
    optimizer, criterion = model.configure_optimizers(), nn.CrossEntropyLoss()
    model.train()
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for idx in torch.randperm(len(x)).split(batch):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x[idx]), y[idx]).backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return model.eval(), seconds


def run_images(work: Path, kinds: list[str], epsilons: list[float | None], rounds: int | None,
               plain: bool) -> tuple[list[list[str]], list[list[str]], dict[str, Any]]:
    paths = synthesize_image_hospitals(work / "images", n_hospitals=3, images_per_hospital=500, parts=(0.4, 0.1, 0.5),
                                       classes=CLASSES, majority=0.9, lesion_strength=0.75, layout="npz", seed=3)
    rows, wall_rows, results = [], [], {"runs": {}, "pooled": {}}
    for kind in kinds:
        spec = parse_spec(image_spec(paths, kind, None, rounds, plain))
        data = spec.data
        assert isinstance(data, ImageDataSpec)
        splits = [load_image_split(p, data.contract, data.test_fraction, spec.seed) for p in paths]
        train_x = np.concatenate([s.train_images for s in splits])
        train_y = np.concatenate([s.train_labels for s in splits])
        test_x = np.concatenate([s.test_images for s in splits])
        test_y = np.concatenate([s.test_labels for s in splits])
        pixels = train_x.astype(np.float64) / 255
        mean, std = [float(pixels.mean())], [float(pixels.std())]
        torch.set_num_threads(1)
        started = time.perf_counter()
        model, epochs = _plain_loop(kind, spec.model.width, train_x, train_y, mean, std, spec.training.rounds * spec.training.local_epochs,
                                    spec.training.batch_size, spec.training.learning_rate)
        loop_wall = time.perf_counter() - started
        torch.set_num_threads(os.cpu_count() or 1)
        probs = predict_vision(model, test_x, mean=mean, std=std, device="cpu")
        pooled = _binary_metrics(probs[:, 1], test_y, probs.argmax(axis=1) == 1, "argmax")
        results["pooled"][kind] = pooled
        rows.append(_row(f"pooled {kind}, plain PyTorch loop (baseline)", "none", pooled, None))
        for epsilon in epsilons:
            summary, package, marks, wall = federate(image_spec(paths, kind, epsilon, rounds, plain), work)
            probs = package.scorer.predict(test_x)
            metrics = _binary_metrics(probs[:, 1], test_y, *_served(package, probs))
            metrics["report_auroc"] = float(summary["validation"].get("validation.auroc", "nan"))
            metrics["epsilon"] = max(summary["epsilon"].values()) if summary["epsilon"] else None
            results["runs"][(kind, epsilon)] = metrics
            rows.append(_row(f"federated {kind}", _eps(epsilon, metrics["epsilon"]), metrics, pooled))
            print(" | ".join(rows[-1]), file=sys.stderr)
            walls = [r["wall"] for r in summary["seconds"]["rounds"]]
            first = marks.get("statistics", float("nan"))  # launch -> statistics done, round 1 starts
            wall_rows.append([f"{kind}", _eps(epsilon, metrics["epsilon"]), f"{marks.get('start', float('nan')):.1f} s",
                              f"{first:.1f} s", f"{walls[0]:.2f} s", f"{statistics.median(walls):.2f} s",
                              f"{statistics.median(epochs):.2f} s", f"{statistics.median(walls) / statistics.median(epochs):.0f}x",
                              f"{wall:.1f} s", f"{loop_wall:.1f} s"])
    return rows, wall_rows, results


def aims(tab: dict[str, Any], img: dict[str, Any]) -> list[list[str]]:
    """The issue's aims, checked on this run's numbers."""
    out = []
    fed = tab["runs"].get(("logistic", None))
    if fed:
        gap = fed["auroc"] - tab["pooled"]["auroc"]
        out.append(["non-private federated logistic within 0.01 AUROC of pooled", f"federated - pooled {gap:+.3f}",
                    "met" if gap >= -0.01 else "NOT met"])
    one_class = [f"{k} eps {e:g}" for res in (tab, img) for (k, e), m in res["runs"].items()
                 if e is not None and (m["one_class_t"] if "one_class_t" in m else m["one_class"])]
    dp_runs = sum(1 for res in (tab, img) for (_, e) in res["runs"] if e is not None)
    out.append(["no DP model predicts one class only (its served decision; risk 0.5 where it has none)",
                f"{len(one_class)} of {dp_runs}" + (f": {', '.join(one_class)}" if one_class else ""),
                "met" if not one_class else "NOT met"])
    for (kind, eps), m in img["runs"].items():
        if eps == 8.0 and (kind, None) in img["runs"]:
            drop = img["runs"][(kind, None)]["auroc"] - m["auroc"]
            out.append([f"DP {kind} at epsilon 8 within 0.05 AUROC of non-private federated", f"non-private - DP {drop:+.3f}",
                        "met" if drop <= 0.05 else "NOT met"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="logistic + cnn at epsilon 8 and none, 3 rounds; prints only")
    parser.add_argument("--plain", action="store_true", help="leave out the issue-11 spec fields (the 'before' table)")
    parser.add_argument("--resnet", action="store_true", help="also resnet18 (slow on 2 cores)")
    parser.add_argument("--rounds", type=int, default=None, help="default: the spec's default (3 with --quick)")
    parser.add_argument("--patients", type=int, default=1200, help="tabular patients in all (the four-site cardiology data: 920)")
    parser.add_argument("--only", choices=["tabular", "images"], default=None, help="one half only (prints, writes nothing)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="bioverse-quality-"))
    os.environ["BIOVERSE_DATA_DIR"] = str(work / "home")
    epsilons = [8.0, None] if args.quick else EPSILONS
    rounds = args.rounds or (3 if args.quick else None)
    shown = {e: parse_spec(image_spec([Path(f"x{i}") for i in range(3)], "cnn", e, rounds, args.plain)).training.rounds for e in (None, 8.0)}
    tab_shown = {e: parse_spec(tabular_spec([Path(f"x{i}") for i in range(4)], "logistic", e, rounds, args.plain)).training.rounds for e in (None, 8.0)}
    started = time.perf_counter()
    empty: dict[str, Any] = {"runs": {}, "pooled": {"auroc": float("nan"), "n": 0, "positives": 0}}
    tab_rows, tab = ([], empty) if args.only == "images" else run_tabular(
        work, ["logistic"] if args.quick else ["logistic", "mlp"], epsilons, rounds,
        args.patients, args.plain)
    img_rows, wall_rows, img = ([], [], empty) if args.only == "tabular" else run_images(
        work, ["cnn", "resnet18"] if args.resnet else ["cnn"], epsilons, rounds, args.plain)
    total = time.perf_counter() - started
    headers = ["model", "epsilon (target, spent max)", "AUROC", "vs pooled", "calibration slope", "balanced acc. @ 0.5",
               "balanced acc. of the served decision (rule)"]
    used = [f for f, present in (("data.split_column", _has(DataSpec, "split_column")),
                                 ("data.missing_codes", _has(DataSpec, "missing_codes")),
                                 ("training.class_weights: balanced", _has(TrainingSpec, "class_weights")),
                                 ("validation.threshold: youden", _has(ValidationSpec, "threshold"))) if present and not args.plain]
    tab_pooled = tab["pooled"]
    body = (
        f"## Quality against epsilon (`benchmarks/quality_vs_epsilon.py{' --plain' if args.plain else ''}`)\n\n"
        f"{machine()}; whole script {total / 60:.1f} min. Issue-11 spec fields used: {', '.join(used) or 'none'}.\n"
        f"Tabular: 4 synthetic hospitals, {args.patients} patients (hospital-02 writes `sex` as ` M ` and smoking codes as "
        "`3.0` where the others write `3`; hospital-03 writes a missing cholesterol as `0`; a fixed `split` column), "
        f"FedAvg, {_rounds(tab_shown)}, spec defaults otherwise; held out: {tab_pooled['n']} rows "
        f"({tab_pooled['positives']} events) of the hospitals' test parts. Pooled baseline: scikit-learn "
        "LogisticRegression on the same training rows with spellings and the missing code cleaned, median imputation "
        "+ indicators. Images: 3 hospitals, each about 200 training images (28x28x1, 90/10 normal/lesion, lesions at 0.75 "
        "of the default intensity) and `.npz` val and test parts (500 images per hospital split 40/10/50 by patient, "
        f"so that the test parts hold {img['pooled'].get('cnn', {}).get('positives', 0)} lesion images), "
        f"SmallCNN, batch 32, {_rounds(shown)}; the pooled baseline is a plain PyTorch loop of the same epochs over all "
        "hospitals' training images. Federated numbers: the registered version scored on the same held-out rows with "
        "`training.tabular.validation.local_report` (AUROC, calibration slope); balanced accuracy at risk 0.5 and at the "
        "decision the version serves (its package's rule; pooled: Youden's J on its training rows, images argmax).\n\n"
        + table(headers, tab_rows + img_rows)
        + "\n\nAims of issue 11, this run:\n\n" + table(["aim", "measured", "verdict"], aims(tab, img))
        + "\n\nImage models, wall time (Flower simulation, 1 CPU per hospital) against the plain loop "
        "(one epoch over the pooled training images = one round's training):\n\n"
        + table(["model", "epsilon", "ServerApp up", "launch to round 1", "round 1", "median round", "plain loop epoch",
                 "round / epoch", "whole run", "plain loop, all epochs"], wall_rows)
    )
    print(body)
    if not args.quick and args.only is None:
        write_section("quality-vs-epsilon-before" if args.plain else "quality-vs-epsilon", body)


if __name__ == "__main__":
    main()
