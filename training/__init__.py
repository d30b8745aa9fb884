"""Tabular clinical risk models, hospital data contracts and DP-SGD training."""
