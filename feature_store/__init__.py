"""The Feast feature repository (patients' demographics, vitals, labs) and a typed client."""
