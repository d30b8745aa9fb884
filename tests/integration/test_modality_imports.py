"""Parsing a spec looks its modality up without importing the modality's implementation (a subprocess probe)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_parsing_a_spec_imports_no_modality_implementation() -> None:
    probe = ("import sys; from experiments.spec import parse_spec; from tests.conftest import spec_dict; "
             "from pathlib import Path; parse_spec(spec_dict([Path('a.csv'), Path('b.csv')])); "
             "print(sorted(m for m in ('training.tabular.hospital', 'training.imaging.hospital', "
             "'training.tabular.models', 'training.imaging.vision', 'flwr', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
