"""``bioverse hospital``: join a federation as a hospital, run its node, see and audit what touched its data."""

from __future__ import annotations

import typer

__all__ = ["hospital_app"]

hospital_app = typer.Typer(help="A hospital's node: join a federation, start it, its status, policy and audit log.",
                           no_args_is_help=True)
