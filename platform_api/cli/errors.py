"""Errors the ``bioverse`` CLI raises itself; each prints as one line and exits 1.

Hierarchy::

    CliError                    base: a refusal the CLI prints as one line (exit 1)
    ├── CliInputError           an option or argument the user gave is refused (also a ValueError)
    └── PlatformStoreError      the platform database cannot be read or written (down, table dropped, write refused)

The domain errors of the packages below (``TrainingError``, ``ExperimentError``,
``FederationError``, ``ServingError``, ``FeatureStoreError``, ``PlatformError``) print the
same way; see :func:`platform_api.cli.output.one_line_errors`.
"""

from __future__ import annotations

__all__ = ["CliError", "CliInputError", "PlatformStoreError"]


class CliError(Exception):
    """Base class of the errors the CLI raises itself: one line on stderr, exit code 1."""


class CliInputError(CliError, ValueError):
    """An option or argument the user gave is refused (a ``ValueError`` too, for existing callers)."""


class PlatformStoreError(CliError):
    """The platform database cannot be read or written: the cause in one line, not a traceback."""

    @classmethod
    def caused_by(cls, what: str, error: BaseException) -> PlatformStoreError:
        """``<what>: <the database driver's message>``, whitespace collapsed."""
        cause = getattr(error, "orig", None) or error
        return cls(f"{what}: {' '.join(str(cause).split())}")
