"""Serving registered models: the one loader through the review gate (``model_source``, ``loaded``,
``follow``), the Ray Serve risk and vision deployments and their app builders, and bulk scoring.

See docs/serving.md.
"""
