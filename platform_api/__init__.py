"""The platform's edge: the FastAPI app (routes, auth, audit, services, the review page) and the ``bioverse`` CLI."""
