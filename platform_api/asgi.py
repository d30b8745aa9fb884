"""The API server process's entry point (``uvicorn platform_api.asgi:app``); it keeps torch out (docs/api.md)."""

from __future__ import annotations

import sys

sys.modules.setdefault("torch", None)  # type: ignore[arg-type] - an import of torch now raises ImportError

from platform_api.main import create_app  # noqa: E402 - after the guard, on purpose

app = create_app()
