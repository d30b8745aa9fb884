"""``bioverse features``: the Feast feature store (init, ingest, materialize, get)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from platform_api.cli.errors import CliInputError
from platform_api.cli.output import one_line_errors, out

__all__ = ["features_app"]

features_app = typer.Typer(help="The Feast feature store: patients' current features.", no_args_is_help=True)


@features_app.command("init")
@one_line_errors
def features_init() -> None:
    """Create (or update) the Feast repo and apply its definitions.

    The online store comes from BIOVERSE_ONLINE_STORE (sqlite or redis) and BIOVERSE_REDIS_URL.
    """
    from feature_store.configured import configured_repo

    repo = configured_repo(init=True)
    out.print(f"Feast repo ready in {repo.repo_dir} (run `feast` commands there)", highlight=False)


@features_app.command("ingest")
@one_line_errors
def features_ingest(
    directory: Annotated[Path, typer.Argument(help="Folder of hospital files (CSV or Parquet), one per tenant.")],
    tenant: Annotated[str | None, typer.Option(help="Tenant of a single file (default: each file's name).")] = None,
) -> None:
    """Load hospital files (the training data contract) into the offline store, one tenant per file."""
    from feature_store.configured import configured_repo
    from feature_store.definitions import VIEWS
    from feature_store.errors import FeatureStoreError
    from training.tabular.contract import DataContract, load_hospital_table

    files = sorted(p for p in directory.glob("*") if p.suffix.lower() in (".csv", ".parquet")) if directory.is_dir() else []
    if not files:
        raise FeatureStoreError(f"{directory}: no .csv or .parquet hospital files")
    if tenant and len(files) > 1:
        raise CliInputError("--tenant names the tenant of a single file; this folder holds several")
    contract = DataContract("patient_id", None, VIEWS["vitals"] + VIEWS["labs"] + ("age",), ("sex", "smoking"))
    repo = configured_repo()
    for path in files:
        frame = load_hospital_table(path, contract)
        count = repo.ingest(frame, tenant_id=tenant or path.stem)
        out.print(f"{tenant or path.stem}: {count} patients from {path}", highlight=False)


@features_app.command("materialize")
@one_line_errors
def features_materialize() -> None:
    """Load the latest offline features into the online store."""
    from feature_store.configured import configured_repo

    configured_repo().materialize()


@features_app.command("get")
@one_line_errors
def features_get(
    tenant: Annotated[str, typer.Argument(help="The tenant.")],
    patient_ids: Annotated[list[str], typer.Argument(help="Patient ids within the tenant.")],
) -> None:
    """Print patients' current online features as JSON lines."""
    from feature_store.configured import configured_repo

    for row in configured_repo().online_features(tenant, patient_ids):
        out.print(json.dumps(row), highlight=False, soft_wrap=True)
