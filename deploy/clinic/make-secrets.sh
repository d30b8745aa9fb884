#!/bin/sh
# Write the clinic's secret files under ./secrets, random and consistent with each other. The folder is
# 0700 (no other host user reaches them); the files are 0644 because compose mounts them as they are and
# the containers run as uid 10001, not as the files' owner.
# Run once before the first `docker compose up`; it refuses to overwrite existing secrets.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
chmod 700 secrets
if [ -e secrets/postgres_password ]; then
  echo "secrets/ already holds secrets; remove them first to make new ones" >&2
  exit 1
fi
umask 022
random() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
pg="$(random)"
printf '%s' "$pg" > secrets/postgres_password
printf 'postgresql://bioverse:%s@postgres:5432' "$pg" > secrets/postgres_url
printf 'postgresql+psycopg2://bioverse:%s@postgres:5432/bioverse' "$pg" > secrets/database_url
printf 'postgresql://bioverse:%s@postgres:5432/bioverse_mlflow' "$pg" > secrets/mlflow_database_url
random > secrets/token_secret
random > secrets/metrics_token
key="bioverse$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
secret="$(random)"
printf '%s' "$key" > secrets/s3_access_key
printf '%s' "$secret" > secrets/s3_secret_key
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key" "$secret" > secrets/s3_credentials
echo "wrote $(ls secrets | wc -l) secret files under $(pwd)/secrets"
