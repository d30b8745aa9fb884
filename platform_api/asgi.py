"""The API server process's entry point: ``uvicorn platform_api.asgi:app``.

The API scores with NumPy (``training.tabular.scoring``) and never needs PyTorch, but Feast
imports it when it can (for an optional ``to_tensor``), which costs about 230 MB of
resident memory. A server process started here therefore keeps ``torch`` out: Feast
sees it as not installed. A model version saved without NumPy weights still loads
(``RiskScorer.from_files`` then imports PyTorch for real).
"""

from __future__ import annotations

import sys

sys.modules.setdefault("torch", None)  # type: ignore[arg-type] - an import of torch now raises ImportError

from platform_api.main import create_app  # noqa: E402 - after the guard, on purpose

app = create_app()
