#!/bin/sh
# Secrets by file: for each BIOVERSE_*_FILE (or MLFLOW_*_FILE) variable, export the variable without
# _FILE set to the file's content (compose secrets, Kubernetes secret volumes), then run the command.
# (AWS_SHARED_CREDENTIALS_FILE is left alone: boto reads that file itself.)
set -eu
for pair in $(env | grep -E '^(BIOVERSE|MLFLOW)_[A-Z0-9_]*_FILE=' | cut -d= -f1); do
  name="${pair%_FILE}"
  file="$(printenv "$pair")"
  if [ ! -r "$file" ]; then
    echo "bioverse-entrypoint: $pair names $file, which cannot be read" >&2
    exit 64
  fi
  export "$name=$(cat "$file")"
  unset "$pair"
done
exec "$@"
