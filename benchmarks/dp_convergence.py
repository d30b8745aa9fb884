"""DP image training that converges: loss per round and AUROC on small imbalanced hospitals.

Three synthetic imaging hospitals of 200 images each (28x28 grayscale, 2 classes at 90/10),
the SmallCNN, DP-SGD at epsilon 8, federated averaging in process (the same local training
and noise calibration as a Flower run, without the messaging). Compares the settings the
issue reported (Adam at lr 0.002, batch 64, clip 1.0) with BioVerse's DP defaults
(``experiments.dp_defaults``), fixed and adaptive clipping, and server momentum.

Usage: python benchmarks/dp_convergence.py [--quick] [--rounds 8] [--seeds 2]
Prints a table and rewrites the ``dp-convergence`` section of benchmarks/RESULTS.md
(``--quick``, a smoke run, only prints).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from _results import machine, table, write_section
from training.dp_loop import sample_rate, steps_per_epoch
from training.imaging.local import predict_vision, train_vision_locally
from training.imaging.synth import ImageSiteProfile, draw_patients, render_images
from training.imaging.vision import build_vision_model
from training.privacy import DPConfig

EPSILON = 8.0
DELTA = 1e-5
PREVALENCE = (0.9, 0.1)
HOSPITALS = 3


@dataclass(frozen=True)
class Setting:
    """One column of the comparison: local optimisation, clipping and the server step."""

    label: str
    optimizer: str
    lr: float
    batch: int
    clip: float
    epochs: int = 1
    clipping: str = "fixed"
    server_momentum: float = 0.0
    private: bool = True
    balanced: bool = False  # class weights n / (k * count_k) from the pooled training counts
    fedadam_tau: float | None = None  # server-side FedAdam (Flower's update, eta 0.01) with this tau


def hospitals(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per hospital (train images, train labels, test images, test labels), split 80/20 by patient."""
    out = []
    for child in np.random.SeedSequence(seed).spawn(HOSPITALS):
        rng = np.random.default_rng(child)
        profile = ImageSiteProfile(brightness=float(rng.uniform(-0.08, 0.08)), contrast=float(rng.uniform(0.8, 1.2)),
                                   noise=float(rng.uniform(0.02, 0.06)), blur=float(rng.uniform(0.0, 0.03)),
                                   tint=(1.0, 1.0, 1.0), prevalence=PREVALENCE)
        patients, labels = draw_patients(n, profile.prevalence, rng, "p")
        images = render_images(labels, patients, profile, size=28, channels=1, patterns=("none", "blob"), rng=rng)
        ids = rng.permutation(np.unique(patients))
        test = np.isin(patients, ids[: len(ids) // 5])
        out.append((images[~test], labels[~test], images[test], labels[test]))
    return out


def run(setting: Setting, data: list, rounds: int, seed: int) -> tuple[list[float], float, float]:
    """Train ``rounds`` federated rounds; returns the mean training loss per round and the
    pooled held-out AUROC and balanced accuracy (argmax) of the final model."""
    torch.manual_seed(seed)
    pixels = np.concatenate([d[0] for d in data]).astype(np.float64) / 255
    mean, std = [float(pixels.mean())], [float(pixels.std())]
    model = build_vision_model("cnn", 1, 2, lr=setting.lr, optimizer=setting.optimizer, width=16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    momentum: dict[str, torch.Tensor] = {}
    m_t: dict[str, torch.Tensor] = {}
    v_t: dict[str, torch.Tensor] = {}
    clip = setting.clip  # adaptive clipping: the hospitals' mean bound carries to the next round
    counts = np.bincount(np.concatenate([d[1] for d in data]), minlength=2)
    weights_by_class = (counts.sum() / (len(counts) * counts)).tolist() if setting.balanced else None
    losses = []
    for r in range(rounds):
        updates, weights, round_loss, bounds = [], [], [], []
        for x, y, _, _ in data:
            local = build_vision_model("cnn", 1, 2, lr=setting.lr, optimizer=setting.optimizer, width=16)
            local.load_state_dict(state)
            q = sample_rate(len(y), setting.batch)
            steps = setting.epochs * steps_per_epoch(len(y), setting.batch) * rounds
            dp = DPConfig(target_epsilon=EPSILON, target_delta=DELTA, max_grad_norm=clip, grad_sample_mode="hooks",
                          clipping=setting.clipping) if setting.private else None
            noise = dp.noise_multiplier_for(sample_rate=q, total_steps=steps) if dp else None
            result = train_vision_locally(local, x, y, mean=mean, std=std, epochs=setting.epochs, batch_size=setting.batch,
                                          dp=dp, noise_multiplier=noise, seed=seed * 1000 + r, device="cpu",
                                          class_weights=weights_by_class)
            bounds.append(result.clip_bound or clip)
            updates.append(local.state_dict())
            weights.append(len(y))
            round_loss.append(result.loss)
        clip = float(np.average(bounds, weights=weights))
        avg = {k: sum(w * u[k].double() for w, u in zip(weights, updates, strict=True)) / sum(weights) for k in state}
        if setting.server_momentum:
            delta = {k: state[k].double() - avg[k] for k in state}
            momentum = {k: setting.server_momentum * momentum[k] + delta[k] if momentum else delta[k] for k in state}
            avg = {k: state[k].double() - (1 - setting.server_momentum) * momentum[k] for k in state}  # DP default lr
        if setting.fedadam_tau is not None:  # as flwr.serverapp.strategy.FedAdam (beta 0.9, 0.99)
            delta = {k: avg[k] - state[k].double() for k in state}
            m_t = {k: 0.9 * m_t[k] + 0.1 * delta[k] if m_t else 0.1 * delta[k] for k in state}
            v_t = {k: 0.99 * v_t[k] + 0.01 * delta[k] ** 2 if v_t else 0.01 * delta[k] ** 2 for k in state}
            eta = 0.01 * math.sqrt(1 - 0.99 ** (r + 2)) / (1 - 0.9 ** (r + 2))
            avg = {k: state[k].double() + eta * m_t[k] / (v_t[k].sqrt() + setting.fedadam_tau) for k in state}
        state = {k: avg[k].to(state[k].dtype) for k in state}
        losses.append(float(np.average(round_loss, weights=weights)))
    model.load_state_dict(state)
    xt = np.concatenate([d[2] for d in data])
    yt = np.concatenate([d[3] for d in data])
    probs = predict_vision(model, xt, mean=mean, std=std, device="cpu")
    return losses, float(roc_auc_score(yt, probs[:, 1])), float(balanced_accuracy_score(yt, probs.argmax(axis=1)))


def settings() -> list[Setting]:
    """Before (the issue's settings), the new defaults, and their variations."""
    from training.imaging.spec import DP_IMAGE_DEFAULTS

    t, p = DP_IMAGE_DEFAULTS["training"], DP_IMAGE_DEFAULTS["privacy"]
    new = Setting(f"DP defaults: sgd {t['learning_rate']:g}, b{t['batch_size']}, C={p['max_grad_norm']:g}", t["optimizer"],
                  t["learning_rate"], t["batch_size"], p["max_grad_norm"], t["local_epochs"])
    old = Setting("before (the issue's spec): adam 0.002, b64, C=1", "adam", 2e-3, 64, 1.0)
    return [
        old,
        replace(old, label="before, non-private", private=False),
        new,
        replace(new, label="DP defaults + adaptive clipping (q 0.5)", clipping="adaptive"),
        replace(new, label="DP defaults + FedAvgM (momentum 0.9, server lr 0.1)", server_momentum=0.9),
        replace(new, label="DP defaults' optimiser, non-private", private=False),
        replace(new, label="DP defaults + FedAdam (eta 0.01, tau 0.001: the non-DP default)", fedadam_tau=1e-3),
        replace(new, label="DP defaults + FedAdam (eta 0.01, tau 0.01: the DP default)", fedadam_tau=1e-2),
        replace(old, label="before + balanced class weights", balanced=True),
        replace(new, label="DP defaults + balanced class weights", balanced=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 3 rounds; print only")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, seeds = (3, 1) if args.quick else (args.rounds, args.seeds)
    rows = []
    started = time.perf_counter()
    for setting in settings():
        curves, aurocs, balanced = [], [], []
        for seed in range(seeds):
            losses, auroc, bacc = run(setting, hospitals(200, seed), rounds, seed)
            curves.append(losses)
            aurocs.append(auroc)
            balanced.append(bacc)
        mean_curve = [statistics.fmean(c[r] for c in curves) for r in range(rounds)]
        rows.append([setting.label, " ".join(f"{v:.2f}" for v in mean_curve), f"{statistics.fmean(aurocs):.3f}",
                     f"{min(aurocs):.3f}-{max(aurocs):.3f}", f"{statistics.fmean(balanced):.3f}"])
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    body = (f"## DP image training on small hospitals (`benchmarks/dp_convergence.py`)\n\n{machine()}; 3 hospitals x 200 "
            f"images (160 train), 28x28x1, 2 classes at 90/10, SmallCNN w16, DP-SGD (hooks) at epsilon {EPSILON:g}, "
            f"{rounds} rounds of in-process FedAvg, mean of {seeds} seeds; {time.perf_counter() - started:.0f} s in all.\n\n"
            + table(["setting", "training loss per round", "AUROC (pooled held-out)", "range", "balanced accuracy"], rows))
    print(body)
    if not args.quick:
        write_section("dp-convergence", body)


if __name__ == "__main__":
    main()
