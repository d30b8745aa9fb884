"""The CLI starts fast: a light command imports only what it needs, counted in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "experiments" / "examples" / "quickstart.yaml"

#: Top-level packages no light command may import (each costs from 0.1 s to seconds of CPU).
HEAVY = frozenset({"torch", "lightning", "pytorch_lightning", "opacus", "pandas", "numpy", "pyarrow", "scipy", "sklearn",
                   "mlflow", "ray", "feast", "flwr", "sqlalchemy", "fastapi", "uvicorn", "matplotlib", "PIL", "alembic"})
#: Still loaded by spec parsing: training.categories imports numpy at its top (about 0.1 s;
#: reported; remove it from here when it no longer does).
SPEC_PARSING_STILL_LOADS = frozenset({"numpy"})

PROBE = """
import json, sys
sys.argv = ["bioverse", *sys.argv[2:]]
from platform_api.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
with open(OUT, "w") as f:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, f)
"""


def _modules_of(tmp_path: Path, *args: str) -> tuple[int, set[str], int]:
    """Run ``bioverse *args`` in a fresh interpreter; its exit code, the top-level packages it
    imported and how many modules in all."""
    out = tmp_path / "modules.json"
    code = PROBE.replace("OUT", repr(str(out)))
    done = subprocess.run([sys.executable, "-c", code, "bioverse", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"BIOVERSE_DATA_DIR": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert out.exists(), done.stderr[-3000:]
    found = json.loads(out.read_text())
    modules = found["modules"]
    return found["exit"], {m.split(".")[0] for m in modules}, len(modules)


def test_help_imports_no_heavy_package(tmp_path: Path) -> None:
    code, packages, count = _modules_of(tmp_path, "--help")
    assert code == 0
    assert not packages & HEAVY, sorted(packages & HEAVY)
    assert count < 600, count  # 339 when written: typer, click, rich and the CLI's own modules


def test_experiment_validate_imports_no_training_stack(tmp_path: Path) -> None:
    code, packages, count = _modules_of(tmp_path, "experiment", "validate", str(QUICKSTART))
    assert code == 0
    assert not packages & (HEAVY - SPEC_PARSING_STILL_LOADS), sorted(packages & HEAVY)
    assert count < 800, count  # 457 when written; pandas would add about 450 modules, torch over 2000
