"""DP-SGD step time over plain step time: same model, data and batch size, same run.

Usage: python benchmarks/dp_overhead.py [--rows 20000] [--repeats 5]
Prints a table and rewrites the ``dp-overhead`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import numpy as np
import torch

from _results import machine, table, write_section
from training.privacy import DPConfig
from training.tabular.data import TabularDataset
from training.tabular.local import train_locally
from training.tabular.models import build_model

MODES = ["fused", "ghost", "hooks", "functorch"]


def step_seconds(kind: str, data: TabularDataset, batch: int, mode: str | None) -> float:
    """Seconds per optimisation step of one local epoch."""
    model = build_model(kind, data.x.shape[1], hidden=(64, 32), dropout=0.0) if kind == "mlp" else build_model(kind, data.x.shape[1])
    dp = DPConfig(grad_sample_mode=mode) if mode else None
    result = train_locally(model, data, epochs=1, batch_size=batch, dp=dp, noise_multiplier=1.0 if mode else None)
    return result.seconds / result.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # as a simulated hospital runs
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, 22)).astype(np.float32)  # 22 = the demo's encoded width
    y = (x[:, 0] - x[:, 1] + rng.normal(size=args.rows) > 1).astype(np.float32)
    data = TabularDataset(x, y)
    rows = []
    for kind in ("logistic", "mlp"):
        for batch in (64, 256, 1024):
            times: dict[str | None, list[float]] = {m: [] for m in [None, *MODES]}
            for _ in range(args.repeats):  # interleaved, so drift hits every mode alike
                for mode in times:
                    times[mode].append(step_seconds(kind, data, batch, mode))
            plain = statistics.median(times[None])
            row = [kind, str(batch), f"{plain * 1e3:.3f}"]
            row += [f"{statistics.median(times[m]) / plain:.2f}" for m in MODES]
            rows.append(row)
            print(" | ".join(row), file=sys.stderr)
    headers = ["model", "batch", "plain ms/step", *[f"{m} / plain" for m in MODES]]
    body = (
        "## DP-SGD overhead (`benchmarks/dp_overhead.py`)\n\n"
        f"{machine()}; {args.rows} rows x 22 features, 1 thread, median of {args.repeats} interleaved repeats.\n"
        "Ratios are DP step time over plain step time in the same run (lower is better; aim <= 1.5).\n"
        "`fused` is BioVerse's one-backward-pass clipping for Linear-only models; the others are Opacus 1.6 modes.\n\n"
        + table(headers, rows)
    )
    print(body)
    write_section("dp-overhead", body)


if __name__ == "__main__":
    main()
