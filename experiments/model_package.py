"""The import path that versions registered before the modality sub-packages pickled their MLflow pyfunc under.

MLflow stores a pyfunc wrapper by reference (module and class name); these names keep those
versions loadable. Code imports the classes from ``training.tabular.package`` and
``training.imaging.package``.
"""

from __future__ import annotations

from training.imaging.package import VisionModelPackage
from training.tabular.package import RiskModelPackage

__all__ = ["RiskModelPackage", "VisionModelPackage"]
