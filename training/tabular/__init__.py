"""Tabular clinical data: contracts, federated preprocessing, risk models, local DP rounds, validation, scoring."""
