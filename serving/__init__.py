"""Ray Serve deployments for BioVerse's models (risk now; vision plugs in the same way)."""
