"""Image classifier throughput: `train_vision_locally` (plain, augmented, DP-SGD hooks and
ghost) and `predict_vision` against hand-written PyTorch loops over the same model.

Usage: python benchmarks/vision_training.py [--quick] [--repeats 3] [--threads 1]
Prints a table and rewrites the ``vision-training`` section of benchmarks/RESULTS.md
(``--quick``, a smoke run, only prints).
The baselines get the most favourable setup: images already normalised to float on the
device, outside the timed region; ours start from uint8 arrays on the host.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from _results import machine, table, write_section
from training.imaging.batches import Augment
from training.imaging.local import predict_vision, train_vision_locally
from training.imaging.vision import VisionModel, build_vision_model
from training.privacy import DPConfig

#: (label, kind, size, channels, width, training images, batch)
CASES = [
    ("SmallCNN w16, 28x28x1", "cnn", 28, 1, 16, 2048, 64),
    ("ResNet18 w32, 64x64x3", "resnet18", 64, 3, 32, 256, 32),
]
TRAIN_MODES = ["baseline", "plain", "plain+augment", "dp-hooks", "dp-ghost"]


def _images(n: int, channels: int, size: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8), rng.integers(0, classes, size=n)


def _model(kind: str, channels: int, width: int) -> VisionModel:
    torch.manual_seed(0)
    return build_vision_model(kind, channels, 3, width=width)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def baseline_train(model: VisionModel, x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device) -> float:
    """A hand-written loop: shuffled minibatches of pre-normalised images, Adam, cross-entropy."""
    model.to(device).train()
    optimizer, criterion = model.configure_optimizers(), nn.CrossEntropyLoss()
    _sync(device)
    started = time.perf_counter()
    for idx in torch.randperm(len(x), device=device).split(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - started


def ours_train(model: VisionModel, images: np.ndarray, labels: np.ndarray, batch: int, device: torch.device, mode: str) -> float:
    """One local epoch through `train_vision_locally` (uint8 host arrays in, model back on the CPU)."""
    dp = DPConfig(grad_sample_mode=mode.removeprefix("dp-")) if mode.startswith("dp-") else None
    augment = Augment(hflip=True) if mode == "plain+augment" else None
    started = time.perf_counter()
    train_vision_locally(model, images, labels, mean=[0.5] * images.shape[1], std=[0.25] * images.shape[1], epochs=1,
                         batch_size=batch, dp=dp, noise_multiplier=1.0 if dp else None, augment=augment, device=device)
    _sync(device)
    return time.perf_counter() - started


def baseline_predict(model: VisionModel, x: torch.Tensor, batch: int, device: torch.device) -> float:
    """``model(x)`` over pre-normalised batches in inference mode, softmax on the device."""
    model.to(device).eval()
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            torch.softmax(model(x[i:i + batch]), dim=-1)
    _sync(device)
    return time.perf_counter() - started


def ours_predict(model: VisionModel, images: np.ndarray, batch: int, device: torch.device) -> float:
    started = time.perf_counter()
    predict_vision(model, images, mean=[0.5] * images.shape[1], std=[0.25] * images.shape[1], device=device, batch_size=batch)
    return time.perf_counter() - started


def measure(case: tuple[str, str, int, int, int, int, int], device: torch.device, repeats: int, scale: float) -> list[str]:
    """Images/s of every mode, median of ``repeats`` interleaved runs, as a table row."""
    label, kind, size, channels, width, n, batch = case
    n = max(batch * 2, int(n * scale))
    images, labels = _images(n, channels, size)
    x = ((torch.from_numpy(images).float() / 255 - 0.5) / 0.25).to(device)
    y = torch.from_numpy(labels).to(device)
    runs: dict[str, Callable[[VisionModel], float]] = {
        "baseline": lambda m: baseline_train(m, x, y, batch, device),
        **{mode: functools.partial(ours_train, images=images, labels=labels, batch=batch, device=device, mode=mode)
           for mode in TRAIN_MODES[1:]},
        "predict-baseline": lambda m: baseline_predict(m, x, 256, device),
        "predict": lambda m: ours_predict(m, images, 256, device),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: allocator, kernels, Opacus imports
        run(_model(kind, channels, width))
    for _ in range(repeats):  # interleaved, so drift hits every mode alike
        for name, run in runs.items():
            times[name].append(run(_model(kind, channels, width)))
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    row = [label, device.type, str(n), str(batch)]
    row += [f"{rate['baseline']:,.0f}"] + [f"{rate[m]:,.0f} ({rate[m] / rate['baseline']:.2f})" for m in TRAIN_MODES[1:]]
    row += [f"{rate['predict-baseline']:,.0f}", f"{rate['predict']:,.0f} ({rate['predict'] / rate['predict-baseline']:.2f})"]
    print(" | ".join(row), file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a quarter of the images, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, 1 as a simulated hospital runs (0: torch's default)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, scale = (1, 0.25) if args.quick else (args.repeats, 1.0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [measure(case, device, repeats, scale) for device in devices for case in CASES]
    headers = ["model, input", "device", "images", "batch", "baseline train img/s", "plain", "plain + hflip",
               "DP hooks", "DP ghost", "baseline predict img/s", "`predict_vision`"]
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"
    body = (
        "## Vision training and inference (`benchmarks/vision_training.py`)\n\n"
        f"{machine()}{gpu}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; one local epoch per run, "
        f"median of {repeats} interleaved repeats after a warm-up.\n"
        "Images per second; in brackets, over the hand-written baseline in the same run (higher is better). "
        "The baselines start from images already normalised to float on the device; `train_vision_locally` and "
        "`predict_vision` start from uint8 host arrays and include moving them, casting, normalising (and augmenting) "
        "per batch, and returning the model to the CPU. DP rows are Opacus 1.6 per-sample clipping with Poisson "
        "sampling (noise multiplier 1.0, clip 1.0); `ghost` adds BioVerse's Conv2d norm sampler to Opacus's "
        "ghost clipping. 3 random classes, Adam.\n\n"
        + table(headers, rows)
    )
    print(body)
    if not args.quick:
        write_section("vision-training", body)


if __name__ == "__main__":
    main()
