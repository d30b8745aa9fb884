"""The Feast feature repository and its typed client (issue 3 builds them)."""
