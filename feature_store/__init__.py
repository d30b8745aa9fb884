"""The Feast feature repository (patients' demographics, vitals, labs), its typed client, the
features' input contracts and the offline store's point-in-time reader.

See docs/features.md.
"""
