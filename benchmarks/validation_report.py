"""The clinical validation report: what each hospital computes and sends, what the
coordinator builds and renders, against the direct computation on pooled rows (the thing
federation avoids) in the same run.

Usage: python benchmarks/validation_report.py [--hospitals 10] [--patients 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from _results import machine, table, write_section


def best(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--patients", type=int, default=20_000, help="held-out patients per hospital")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from experiments.report import write_report_artifacts
    from training.tabular.validation import build_report, local_aggregates, merge_aggregates
    from training.validation_cells import age_band

    rng = np.random.default_rng(7)
    thresholds = [0.1, 0.2, 0.3]
    sites = []
    for _ in range(args.hospitals):
        n = args.patients
        true = 1 / (1 + np.exp(-rng.normal(-1.2, 1.3, n)))
        label = (rng.random(n) < true).astype(int)
        risk = 1 / (1 + np.exp(-(1.2 * np.log(true / (1 - true)) + 0.1)))
        groups = {"sex": list(rng.choice(["F", "M"], n)), "age_band": [age_band(a) for a in rng.integers(30, 95, n)]}
        sites.append((risk, label, groups))

    hospital_s = best(lambda: local_aggregates(*sites[0][:2], sites[0][2], thresholds))
    parts = {f"h{i:02d}": local_aggregates(r, y, g, thresholds) for i, (r, y, g) in enumerate(sites)}
    payload = len(json.dumps(parts["h00"], separators=(",", ":")).encode())
    coordinator_s = best(lambda: build_report(merge_aggregates(parts), thresholds=thresholds))
    report = build_report(merge_aggregates(parts), thresholds=thresholds)
    with tempfile.TemporaryDirectory() as tmp:
        render_s = best(lambda: write_report_artifacts(report, {"model_name": "bench", "version": "1"}, Path(tmp)), repeats=2)

    risk = np.concatenate([s[0] for s in sites])
    label = np.concatenate([s[1] for s in sites])
    logit = np.log(risk / (1 - risk)).reshape(-1, 1)

    def pooled() -> None:
        roc_auc_score(label, risk)
        average_precision_score(label, risk)
        brier_score_loss(label, risk)
        LogisticRegression(C=1e9, max_iter=1000).fit(logit, label)

    pooled_s = best(pooled)
    exact = roc_auc_score(label, risk)
    rows = [
        ["pooled rows, sklearn (baseline: AUROC, AUPRC, Brier, calibration fit; overall only)", f"{pooled_s:.3f}", "1.00", "-"],
        [f"one hospital's aggregates ({args.patients:,} patients, overall + sex + age bands)", f"{hospital_s:.3f}",
         f"{hospital_s / pooled_s:.2f}", f"{payload / 1024:.0f} KiB sent"],
        [f"coordinator: merge {args.hospitals} + build the full report (all subgroups)", f"{coordinator_s:.3f}",
         f"{coordinator_s / pooled_s:.2f}", "-"],
        ["render: 3 PNG plots, model card, HTML, report.json", f"{render_s:.3f}", f"{render_s / pooled_s:.2f}", "-"],
    ]
    body = (
        "## Validation report (`benchmarks/validation_report.py`)\n\n"
        f"{machine()}; {args.hospitals} hospitals x {args.patients:,} held-out patients, thresholds {thresholds}, "
        f"best of 3. Federated AUROC {report['overall']['auroc']:.5f} vs pooled {exact:.5f} "
        f"(difference {abs(report['overall']['auroc'] - exact):.1e}).\n\n"
        + table(["step", "seconds", "vs pooled", "network"], rows)
    )
    print(body)
    write_section("validation-report", body)


if __name__ == "__main__":
    main()
