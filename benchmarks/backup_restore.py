"""Backup and recovery time at a realistic size (100,000 twins, 1,000,000 predictions): `bioverse
backup create` (plain, encrypted), `verify`, `restore`, and recovery = restore + an API process
answering /readyz 200 (model loaded), against a baseline in the same run: `sqlite3 .backup` (or
`pg_dump -Fc`) + `tar` of the same stores, untarred (pg_restore'd) and started the same way.

Usage: python benchmarks/backup_restore.py [--twins 100000] [--predictions 1000000] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path

import httpx
from _model import register_production_model

from _results import machine, table, write_section
from federation.processes import free_port

BIN = Path(sys.executable).parent
MODEL = "bench-backup-risk"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def env_of(data: Path, db_url: str) -> dict[str, str]:
    return {**os.environ, "BIOVERSE_DATA_DIR": str(data), "BIOVERSE_API_DATABASE_URL": db_url,
            "BIOVERSE_TRACKING_URI": f"sqlite:///{data / 'mlflow.db'}", "BIOVERSE_API_MODEL_NAME": MODEL}


def run(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def _rows(twins: int, predictions: int):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    twin_ids = [str(uuid.uuid4()) for _ in range(twins)]
    twin_rows = [(t, "t1", f"p-{i:07d}", None, now, now) for i, t in enumerate(twin_ids)]

    def prediction_rows():  # type: ignore[no-untyped-def]
        for _ in range(predictions):
            inputs = {"age": rng.randint(30, 90), "systolic_bp": round(rng.uniform(90, 180), 1),
                      "diastolic_bp": round(rng.uniform(60, 110), 1), "heart_rate": rng.randint(50, 120),
                      "cholesterol": round(rng.uniform(3, 8), 2), "glucose": round(rng.uniform(60, 200), 1),
                      "bmi": round(rng.uniform(18, 40), 1), "sex": rng.choice("FM"), "smoking": rng.choice(("never", "former", "current"))}
            yield (str(uuid.uuid4()), rng.choice(twin_ids), "t1", MODEL, "1", rng.random(), json.dumps(inputs), now)

    return twin_rows, prediction_rows()


def build(data: Path, db_url: str, twins: int, predictions: int) -> dict[str, float]:
    """A registered production model, an API key, the rows (bulk insert), 1,000 audit events and a checkpoint."""
    from platform_api.audit import record
    from platform_api.audit_checkpoints import write_checkpoint
    from platform_api.auth import create_key
    from platform_api.db import get_engine, migrate, session_factory
    from training.tabular.synth import synthesize_hospitals

    start = time.perf_counter()
    (hospital,) = synthesize_hospitals(n_hospitals=1, n_patients=300, seed=4, out_dir=data / "hospital")
    register_production_model(work=data, name=MODEL, train_path=hospital.path)
    migrate(db_url)
    with session_factory(db_url)() as session:
        token = create_key(session, role="app", tenant_id="t1")
        for n in range(1000):
            record(session, actor="bench", role="app", tenant_id="t1", patient_id=f"p-{n:07d}", action="twin.read", outcome="ok")
        session.commit()
    model_seconds = time.perf_counter() - start
    start = time.perf_counter()
    twin_rows, prediction_rows = _rows(twins, predictions)
    twins_sql = "INSERT INTO twins (id, tenant_id, patient_id, display_name, created_at, updated_at) VALUES ({})"
    preds_sql = ("INSERT INTO predictions (id, twin_id, tenant_id, model_name, model_version, risk, inputs, created_at) "
                 "VALUES ({})")
    if db_url.startswith("sqlite"):
        with sqlite3.connect(data / "platform.db") as connection:
            connection.executemany(twins_sql.format(",".join("?" * 6)), twin_rows)
            connection.executemany(preds_sql.format(",".join("?" * 8)), prediction_rows)
    else:
        import io

        raw = get_engine(db_url).raw_connection()
        try:
            with raw.cursor() as cur:
                for name, rows, columns in (("twins", twin_rows, "id, tenant_id, patient_id, display_name, created_at, updated_at"),
                                            ("predictions", prediction_rows,
                                             "id, twin_id, tenant_id, model_name, model_version, risk, inputs, created_at")):
                    buffer = io.StringIO()
                    for row in rows:
                        buffer.write("\t".join("\\N" if v is None else str(v).replace("\\", "\\\\") for v in row) + "\n")
                    buffer.seek(0)
                    cur.copy_expert(f"COPY {name} ({columns}) FROM STDIN", buffer)
            raw.commit()
        finally:
            raw.close()
    rows_seconds = time.perf_counter() - start
    write_checkpoint(get_engine(db_url))
    (data / "token").write_text(token)
    return {"model": model_seconds, "rows": rows_seconds}


def start_api(env: dict[str, str]) -> float:
    """The faster of two starts (the box is shared: one start alone is mostly noise)."""
    return min(_start_api(env), _start_api(env))


def _start_api(env: dict[str, str]) -> float:
    """Start the API (uvicorn, one process) and return seconds until /readyz answers 200 (model loaded); then stop it."""
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([str(BIN / "uvicorn"), "--log-level", "warning", "platform_api.asgi:app", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 300:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if answer.status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        sys.exit("the restored API never became ready")
    finally:
        server.terminate()
        server.wait(30)


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def new_database(kind: str, tag: str) -> str:
    if kind == "sqlite":
        return ""
    import psycopg2

    name = f"bioverse_bench_{tag}_{secrets.token_hex(4)}"
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="test")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return f"{PG}/{name}"


def drop_databases(urls: list[str]) -> None:
    import psycopg2

    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="test")
    admin.autocommit = True
    with admin.cursor() as cur:
        for url in urls:
            cur.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    admin.close()


def measure(kind: str, args: argparse.Namespace, work: Path) -> list[list[str]]:
    made: list[str] = []

    def db(data: Path, tag: str) -> str:
        url = new_database(kind, tag) or f"sqlite:///{data / 'platform.db'}"
        made.append(url) if kind == "postgresql" else None
        return url

    src = work / kind / "source"
    src.mkdir(parents=True)
    src_url = db(src, "src")
    built = build(src, src_url, args.twins, args.predictions)
    print(f"[{kind}] built: model {built['model']:.1f} s, {args.twins} twins + {args.predictions} predictions {built['rows']:.1f} s",
          flush=True)
    bioverse, key = str(BIN / "bioverse"), work / "backup.key"
    key.write_text(secrets.token_hex(32))
    rows: list[list[str]] = []
    try:
        # baseline: the database tool + tar of the same stores
        base = work / kind / "baseline"
        base.mkdir()
        start = time.perf_counter()
        if kind == "sqlite":
            run(["sqlite3", str(src / "platform.db"), f".backup {base / 'platform.db'}"])
        else:
            run(["pg_dump", "-Fc", "--compress=1", "-f", str(base / "platform.pgdump"), src_url.replace("+psycopg2", "")])
        run(["sqlite3", str(src / "mlflow.db"), f".backup {base / 'mlflow.db'}"])
        run(["tar", "cf", str(base / "stores.tar"), "-C", str(src), "mlartifacts", "audit", "keys"])
        base_create = time.perf_counter() - start
        base_size = size_of(base)
        restored = work / kind / "baseline-restored"
        restored.mkdir()
        url = db(restored, "base")
        start = time.perf_counter()
        run(["tar", "xf", str(base / "stores.tar"), "-C", str(restored)])
        shutil.copyfile(base / "mlflow.db", restored / "mlflow.db")
        if kind == "sqlite":
            shutil.copyfile(base / "platform.db", restored / "platform.db")
        else:
            run(["pg_restore", "--single-transaction", "--no-owner", "-d", url.replace("+psycopg2", ""), str(base / "platform.pgdump")])
        base_restore = time.perf_counter() - start
        # (the baseline's MLflow paths still point at the source's artifacts: it starts, but is not a relocatable restore)
        base_ready = start_api(env_of(restored, url))
        rows.append([kind, "baseline: db tool + tar", f"{base_create:.1f}", f"{base_size / 1e6:.0f}", "-",
                     f"{base_restore:.1f}", f"{base_ready:.1f}", f"{base_restore + base_ready:.1f}"])
        for label, extra in (("bioverse backup (plain)", []), ("bioverse backup (encrypted)", ["--key-file", str(key)])):
            dest = work / kind / f"backups-{len(rows)}"
            created = run([bioverse, "backup", "create", str(dest), *extra], env_of(src, src_url))
            (name,) = [p.name for p in dest.iterdir()]
            verified = run([bioverse, "backup", "verify", str(dest), name, *extra], env_of(src, src_url))
            target = work / kind / f"restored-{len(rows)}"
            url = db(target, f"r{len(rows)}")
            keys = [] if extra else ["--keys-from", str(src / "keys")]
            restore = run([bioverse, "backup", "restore", str(dest), name, *extra, *keys], env_of(target, url))
            ready = start_api(env_of(target, url))
            rows.append([kind, label, f"{created:.1f} ({created / base_create:.1f}x)", f"{size_of(dest / name) / 1e6:.0f}",
                         f"{verified:.1f}", f"{restore:.1f} ({restore / base_restore:.1f}x)", f"{ready:.1f}",
                         f"{restore + ready:.1f} ({(restore + ready) / (base_restore + base_ready):.2f}x)"])
            print(rows[-1], flush=True)
    finally:
        if made:
            drop_databases(made)
    src_size = size_of(src / "platform.db") if kind == "sqlite" else 0
    rows.append([kind, f"(source: platform.db {src_size / 1e6:.0f} MB; built in {built['rows']:.1f} s)" if src_size
                 else f"(source built in {built['rows']:.1f} s by COPY)", "", "", "", "", "", ""])
    return rows


def forget_settings() -> None:
    """Drop every cached setting and engine, so the next build reads BIOVERSE_DATA_DIR again."""
    from experiments import settings as experiment_settings
    from feature_store import settings as feature_settings
    from platform_api import db, settings

    for cached in (experiment_settings.get_settings, feature_settings.get_settings, settings.get_settings, db.get_engine,
                   db.session_factory):
        cached.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--twins", type=int, default=100_000)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="also measure a PostgreSQL platform database")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("BIOVERSE_GATE_KEY", secrets.token_hex(32))
    work = Path(tempfile.mkdtemp(prefix="bioverse-backup-bench-"))
    try:
        rows = []
        for kind in ("sqlite", "postgresql") if args.postgres else ("sqlite",):
            os.environ["BIOVERSE_DATA_DIR"] = str(work / kind / "source")  # the build's keys and checkpoints live there
            forget_settings()
            rows += measure(kind, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    headers = ["database", "method", "create s", "size MB", "verify s", "restore s", "start to /readyz s", "recovery s"]
    body = table(headers, rows)
    print(body)
    write_section("backup_restore", f"""## Backup and recovery ({args.twins:,} twins, {args.predictions:,} predictions)

`python benchmarks/backup_restore.py{' --postgres' if args.postgres else ''}` on {machine()}, shared with other
agents' builds and tests (loaded: expect noise). Each `bioverse` step is a CLI process (imports included).
Recovery = restore + an API process (uvicorn) answering `/readyz` 200 with the production model loaded
(the faster of two starts).
The baseline copies the same stores with the database's own tool and `tar`, without checksums,
encryption, verification, path relocation or audit re-anchoring; its restored MLflow still points at the
source's artifact folder. (Nx) = the baseline's time on the same database in this run is 1x.

{body}
""")


if __name__ == "__main__":
    main()
