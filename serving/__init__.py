"""Ray Serve deployments for risk and vision models (issue 3 builds them)."""
