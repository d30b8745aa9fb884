"""Experiment specs, MLflow tracking and registration, the registry's review workflow and gate, the validation
report writer, and the library behind ``bioverse data check`` and ``bioverse registry validate``."""
