"""Online feature lookup latency with N patients materialized, SQLite and Redis online stores.

Baselines in the same run: the raw store read of the same eight values by primary key
(a plain SQLite table / a plain Redis hash), i.e. the floor that Feast adds to.

Usage: python benchmarks/feature_lookup.py [--patients 1000000] [--lookups 2000]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pandas as pd
import redis

from _results import machine, table, write_section
from feature_store.definitions import FEATURE_COLUMNS, VIEWS
from feature_store.repo import FeatureRepo
from training.tabular.synth import synthesize_hospitals

RAW = tuple(f"{v}:{c}" for v, cols in VIEWS.items() for c in cols)


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.99)] * 1e3


def timed(fn, ids: list[str], lookups: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    for _ in range(50):
        fn(rng.choice(ids))  # warm up
    samples = []
    for _ in range(lookups):
        patient = rng.choice(ids)
        started = time.perf_counter()
        fn(patient)
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--redis", default="127.0.0.1:6379")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="bioverse-features-"))
    (hospital,) = synthesize_hospitals(n_hospitals=1, n_patients=args.patients, seed=9, out_dir=work / "data", file_format="parquet")
    frame = pd.read_parquet(hospital.path)
    ids = frame["patient_id"].astype(str).tolist()
    rows: list[list[str]] = []
    host, port = args.redis.split(":")

    # --- baselines: the same values, read by primary key from the bare stores ---
    db = sqlite3.connect(work / "baseline.db")
    db.execute(f"CREATE TABLE f (patient_id TEXT PRIMARY KEY, {', '.join(c + ' ' for c in FEATURE_COLUMNS)})")
    db.executemany(f"INSERT INTO f VALUES ({', '.join('?' * (len(FEATURE_COLUMNS) + 1))})",
                   frame[["patient_id", *FEATURE_COLUMNS]].astype(object).where(frame.notna(), None).itertuples(index=False))
    db.commit()
    sqlite_base = timed(lambda p: db.execute("SELECT * FROM f WHERE patient_id = ?", (p,)).fetchone(), ids, args.lookups)
    r = redis.Redis(host=host, port=int(port))
    prefix = f"bioverse-bench-{uuid.uuid4().hex[:8]}:"
    pipe = r.pipeline(transaction=False)
    for n, record in enumerate(frame[["patient_id", *FEATURE_COLUMNS]].astype(str).itertuples(index=False)):
        pipe.hset(prefix + record[0], mapping=dict(zip(FEATURE_COLUMNS, record[1:], strict=True)))
        if n % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    redis_base = timed(lambda p: r.hgetall(prefix + p), ids, args.lookups)
    for start in range(0, len(ids), 10_000):
        r.delete(*[prefix + p for p in ids[start : start + 10_000]])

    # --- Feast ---
    for store in ("sqlite", "redis"):
        repo = FeatureRepo(work / f"repo-{store}").init(online_store=store, redis_url=args.redis,
                                                       project=f"bench_{uuid.uuid4().hex[:8]}")
        repo.ingest(frame, tenant_id="t1")
        started = time.perf_counter()
        repo.materialize()
        materialize = time.perf_counter() - started
        raw = timed(lambda p: repo.online_features("t1", [p], RAW), ids, args.lookups)  # noqa: B023
        full = timed(lambda p: repo.online_features("t1", [p]), ids, args.lookups)  # noqa: B023
        base = sqlite_base if store == "sqlite" else redis_base
        rows.append([store, f"{materialize:.0f} s", f"{base[0]:.3f} / {base[1]:.3f}", f"{raw[0]:.2f} / {raw[1]:.2f}",
                     f"{full[0]:.2f} / {full[1]:.2f}", f"{raw[0] / base[0]:.0f}x"])
        print(rows[-1], file=sys.stderr)
        if store == "redis":
            repo.store.teardown()
    body = (
        "## Online feature lookup (`benchmarks/feature_lookup.py`)\n\n"
        f"{machine()}; {args.patients:,} patients materialized, one patient per lookup, {args.lookups} random lookups, "
        "latency p50 / p99 in ms. Baseline: the bare store's primary-key read of the same 8 values.\n\n"
        + table(["online store", "materialize", "baseline p50 / p99", "Feast 8 features p50 / p99",
                 "Feast + on-demand p50 / p99", "Feast / baseline (p50)"], rows)
    )
    print(body)
    write_section("feature-lookup", body)


if __name__ == "__main__":
    main()
