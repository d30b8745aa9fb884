"""The API server's entry point imports without PyTorch (as `bioverse api` runs it)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import platform_api.asgi  # keeps torch out: an import of torch anywhere below raises ImportError
assert sys.modules.get("torch") is None, "torch was imported"
assert "/v1/twins/{twin_id}/images" in platform_api.asgi.app.openapi()["paths"]
print("ok")
"""


def test_the_server_entry_point_imports_without_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env={"BIOVERSE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
