"""The production profile's services on this machine: three fresh PostgreSQL databases, a Redis
database, a moto S3 server with a bucket; the profile's environment for them (tests and benchmarks)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import psycopg2
import redis
from moto.server import ThreadedMotoServer

__all__ = ["BUCKET", "PG", "S3_KEYS", "ProductionStores", "production_stores"]

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "bioverse-prod"


@dataclass(frozen=True)
class ProductionStores:
    """Running services and the environment that points the production profile at them.

    Attributes:
        env: ``BIOVERSE_PROFILE=production``, its addresses, S3 keys and endpoint, a Feast project.
        dsn: libpq DSN of each store's database (``platform``, ``mlflow``, ``feast``).
        s3, s3_endpoint: The S3 server (stop it to see a failure) and its URL.
        redis: A client of the Redis database the profile uses.
    """

    env: dict[str, str]
    dsn: dict[str, str]
    s3: ThreadedMotoServer
    s3_endpoint: str
    redis: redis.Redis


@contextlib.contextmanager
def production_stores(redis_db: int) -> Iterator[ProductionStores]:
    """Create the databases, start S3, flush ``redis_db``; drop, stop and flush afterwards."""
    stem = f"bioverse_{uuid.uuid4().hex[:10]}"
    names = {store: f"{stem}_{store}" for store in ("platform", "mlflow", "feast")}
    admin = psycopg2.connect(**PG)
    admin.autocommit = True
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    cache = redis.Redis(db=redis_db)
    started = False
    try:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f"CREATE DATABASE {name}")
        s3.start()
        started = True
        endpoint = "http://{}:{}".format(*s3.get_host_and_port())
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1").create_bucket(Bucket=BUCKET)
        cache.flushdb()
        env = {**S3_KEYS, "AWS_ENDPOINT_URL_S3": endpoint, "BIOVERSE_FEAST_PROJECT": stem, "BIOVERSE_PROFILE": "production",
               "BIOVERSE_PRODUCTION_POSTGRES_URL": f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}",
               "BIOVERSE_PRODUCTION_REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
               "BIOVERSE_PRODUCTION_ARTIFACT_ROOT": f"s3://{BUCKET}/mlflow",
               **{f"BIOVERSE_PRODUCTION_{store.upper()}_DATABASE": name for store, name in names.items()}}
        dsn = {store: f"dbname={name} user={PG['user']} host={PG['host']} port={PG['port']}" for store, name in names.items()}
        yield ProductionStores(env, dsn, s3, endpoint, cache)
    finally:
        if started:
            s3.stop()
        cache.flushdb()
        cache.close()
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
