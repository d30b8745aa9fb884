"""The Flower apps and what they share: ServerApp (coordinator), ClientApp (hospital site glue), strategies,
privacy ledger, site config, model selection, launcher and progress (docs/federation.md)."""
