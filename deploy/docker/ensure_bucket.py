"""Create the bucket of ``$MLFLOW_DEFAULT_ARTIFACT_ROOT`` (s3://bucket/prefix) if missing; the clinic's MLflow container runs it first."""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    """Create the bucket (endpoint and credentials: boto3's variables); retry while the store starts."""
    root = urlsplit(os.environ.get("MLFLOW_DEFAULT_ARTIFACT_ROOT", ""))
    if root.scheme != "s3" or not root.netloc:
        return 0
    s3 = boto3.client("s3")
    problem: Exception | None = None
    for _ in range(30):
        try:
            if root.netloc not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=root.netloc)
            return 0
        except (BotoCoreError, ClientError) as err:
            problem = err
            time.sleep(2)
    sys.stderr.write(f"ensure_bucket: cannot create s3://{root.netloc}: {problem}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
