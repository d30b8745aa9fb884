"""Import probes: a fresh interpreter imports a module and reports which heavy libraries came with it.

Moved from the unit tier (test_asgi, test_fhir, test_report, test_report_multiclass, test_scoring):
each spawns a Python process, which the unit tier does not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from training.tabular.contract import DataContract
from training.tabular.models import build_model
from training.tabular.package import save_package_files
from training.tabular.preprocessing import FeatureEncoder, local_statistics
from training.tabular.scoring import RiskScorer
from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
CONTRACT = DataContract(PATIENT_ID, LABEL, FEATURES_NUMERIC, FEATURES_CATEGORICAL)

ASGI_PROBE = """
import sys
import platform_api.asgi  # keeps torch out: an import of torch anywhere below raises ImportError
assert sys.modules.get("torch") is None, "torch was imported"
assert "/v1/twins/{twin_id}/images" in platform_api.asgi.app.openapi()["paths"]
print("ok")
"""


def test_the_server_entry_point_imports_without_torch(tmp_path: Path) -> None:
    """The API server's entry point imports without PyTorch (as `bioverse api` runs it)."""
    done = subprocess.run([sys.executable, "-c", ASGI_PROBE], capture_output=True, text=True, timeout=300,
                          env={"BIOVERSE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_importing_fhir_module_does_not_import_fhir_resources() -> None:
    code = "import sys, platform_api.fhir; print(any(m.startswith('fhir.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_report_import_does_not_load_matplotlib_or_jinja() -> None:
    code = "import sys, experiments.report; print(sorted(m for m in ('matplotlib', 'jinja2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_multiclass_report_import_does_not_load_matplotlib_or_jinja() -> None:
    code = ("import sys, experiments.report, training.imaging.report, training.imaging.report_plots, "
            "training.tabular.report, training.tabular.report_plots; "
            "print(sorted(m for m in ('matplotlib', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_weights_load_without_pytorch(hospital_files: list[Path], tmp_path: Path) -> None:
    """A package's weights.npz is read with NumPy alone (a server process keeps torch out);
    a package without it (registered earlier) still loads, through PyTorch."""
    frame = pd.read_csv(hospital_files[0])
    encoder = FeatureEncoder.from_statistics(local_statistics(frame, CONTRACT), CONTRACT)
    model = build_model("mlp", encoder.input_dim).eval()
    save_package_files(tmp_path, model, encoder, "mlp", {})
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pathlib import Path; from training.tabular.scoring import RiskScorer\n"
            f"s = RiskScorer.from_files(Path({str(tmp_path)!r}))\n"
            "assert sys.modules['torch'] is None, 'torch was imported'\n"
            "print(s.score_one({}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with_npz = RiskScorer.from_files(tmp_path).score_one({})
    assert float(done.stdout) == pytest.approx(with_npz, abs=1e-7)
    (tmp_path / "weights.npz").unlink()
    assert RiskScorer.from_files(tmp_path).score_one({}) == pytest.approx(with_npz, abs=1e-7)
