"""Tabular clinical data: contract, preprocessing, risk models, local DP rounds, validation, scoring, packaging, synth."""
