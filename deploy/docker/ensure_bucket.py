"""Create the MLflow artifact bucket if it is missing (the MLflow container runs this before the server)."""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    """Create ``s3://$MLFLOW_ARTIFACT_BUCKET`` at ``$MLFLOW_S3_ENDPOINT_URL``; retry while the store starts."""
    bucket = os.environ.get("MLFLOW_ARTIFACT_BUCKET", "")
    if not bucket:
        return 0
    s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
    for _ in range(30):
        try:
            if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=bucket)
            return 0
        except (BotoCoreError, ClientError) as err:
            last = err
            time.sleep(2)
    sys.stderr.write(f"ensure_bucket: cannot create s3://{bucket}: {last}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
