"""The platform's edge: the ``bioverse`` CLI (and, later, the FastAPI app)."""
