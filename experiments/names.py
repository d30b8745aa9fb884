"""Names the registry, tracking, serving and the API share, in a module that imports
nothing heavy: the API server process must not import PyTorch (see ``platform_api.asgi``)."""

from __future__ import annotations

__all__ = ["CANDIDATE_ALIAS", "VALIDATION_DIR"]

#: Registry alias of the newest registered version (awaiting clinical review).
CANDIDATE_ALIAS = "candidate"
#: Where a run keeps its version's validation report (report.json, plots, model card, HTML).
VALIDATION_DIR = "validation"
