"""``bioverse coordinator``: set up and run a federation's coordinator (CA, SuperLink, proxy, hospitals)."""

from __future__ import annotations

import typer

__all__ = ["coordinator_app"]

coordinator_app = typer.Typer(help="The coordinator: its CA, SuperLink, reverse proxy and the hospitals it admits.",
                              no_args_is_help=True)
