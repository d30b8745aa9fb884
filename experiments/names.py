"""Names the registry, tracking, serving and the API share; imports nothing heavy (the API process keeps PyTorch out)."""

from __future__ import annotations

__all__ = ["CANDIDATE_ALIAS", "VALIDATION_DIR"]

#: Registry alias of the newest registered version (awaiting clinical review).
CANDIDATE_ALIAS = "candidate"
#: Where a run keeps its version's validation report (report.json, plots, model card, HTML).
VALIDATION_DIR = "validation"
