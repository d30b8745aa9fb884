"""Example experiment specs shipped with BioVerse (YAML files beside this module)."""

from __future__ import annotations

from pathlib import Path

import yaml

from experiments.spec import ExperimentSpec, parse_spec

__all__ = ["EXAMPLES_DIR", "example_path", "quickstart_spec"]

EXAMPLES_DIR = Path(__file__).parent


def example_path(name: str) -> Path:
    """Path of a packaged example spec, e.g. ``example_path("quickstart")``."""
    return EXAMPLES_DIR / f"{name}.yaml"


def quickstart_spec(data_dir: Path) -> ExperimentSpec:
    """The quickstart spec with its hospital files looked up in ``data_dir``."""
    path = example_path("quickstart")
    spec = parse_spec(yaml.safe_load(path.read_text()), str(path))
    return spec.resolve_paths(data_dir)
