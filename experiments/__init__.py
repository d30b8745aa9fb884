"""Experiment specs, MLflow tracking and the model registry."""
