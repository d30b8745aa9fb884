"""The CLI's consoles and its one error handler: a domain error is one line, a bug keeps its traceback."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["DOMAIN_ERRORS", "MAX_ERROR_LINE", "err", "error_line", "exec_server",
           "one_line_errors", "out", "warn"]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
# Every command prints its outcome, or one error line: MLflow's artifact progress bars are noise there.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
F = TypeVar("F", bound=Callable[..., Any])

#: The longest error line the CLI prints (a relayed remote error is cut, never a traceback).
MAX_ERROR_LINE = 300

#: The base error of each package (module, class): what the CLI prints as one line.
DOMAIN_ERRORS = (("training.errors", "TrainingError"), ("experiments.errors", "ExperimentError"),
                 ("federation.errors", "FederationError"), ("serving.errors", "ServingError"),
                 ("feature_store.errors", "FeatureStoreError"), ("platform_api.errors", "PlatformError"),
                 ("platform_api.cli.errors", "CliError"))


def _domain_error_types() -> tuple[type[BaseException], ...]:
    """The packages' base errors, looked up among loaded modules: an error of a package can only
    exist once its errors module is loaded, so the CLI never imports one (``platform_api.errors``
    pulls FastAPI) just to catch it."""
    loaded = (sys.modules.get(module) for module, _ in DOMAIN_ERRORS)
    return tuple(getattr(module, name) for module, (_, name) in zip(loaded, DOMAIN_ERRORS, strict=True)
                 if module is not None)


def _user_paths(arguments: dict[str, Any]) -> set[Path]:
    """The paths a command was given (options and arguments of type ``Path``), resolved."""
    return {value.resolve() for value in arguments.values() if isinstance(value, Path)}


def _opens_a_given_path(e: OSError, given: set[Path]) -> bool:
    """Whether ``e`` is the operating system refusing a path the user gave (or one inside it)."""
    if not isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) or not e.filename:
        return False
    failed = Path(os.fsdecode(e.filename)).resolve()
    return any(failed == path or path in failed.parents for path in given)


def _is_user_error(e: BaseException, arguments: dict[str, Any] | None = None) -> bool:
    """A domain error of a package, or the OS refusing a path among ``arguments``: one line, not a bug."""
    if isinstance(e, _domain_error_types()):
        return True
    return isinstance(e, OSError) and _opens_a_given_path(e, _user_paths(arguments or {}))


def _without_tracebacks(text: str) -> str:
    """Drop any traceback a message carries (a remote error relayed whole), keeping the
    line that names the exception."""
    kept, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("Traceback (most recent call last)"):
            inside = True
            continue
        if inside and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        inside = False
        kept.append(line)
    return "\n".join(kept)


def error_line(e: BaseException | str) -> str:
    """One bounded line: the error's message without tracebacks, whitespace collapsed."""
    text = e if isinstance(e, str) else str(e)
    message = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", _without_tracebacks(text)).split())
    message = message or (type(e).__name__ if not isinstance(e, str) else "")
    return message if len(message) <= MAX_ERROR_LINE else message[: MAX_ERROR_LINE - 3] + "..."


def _error_lines(e: BaseException) -> list[str]:
    """A spec lists every problem, one line each; any other error is one line."""
    from experiments.errors import SpecError

    if isinstance(e, SpecError):
        lines = [error_line(line) for line in str(e).splitlines() if line.strip()]
        return lines or [type(e).__name__]
    return [error_line(e)]


def one_line_errors(fn: F) -> F:
    """Print a package's domain error (or the OS refusing a path the user gave) as one clear,
    bounded line on stderr and exit 1; any other error propagates with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("[bold red]interrupted:[/] stopped; an unfinished run is marked KILLED in MLflow", highlight=False)
            raise typer.Exit(130) from None
        except Exception as e:
            if not _is_user_error(e, kwargs):
                raise
            for line in _error_lines(e):
                err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def warn(message: str) -> None:
    """One yellow warning line on stderr."""
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def exec_server(command: list[str]) -> None:
    """Replace this process with a server process (it keeps the terminal and signals)."""
    from federation.processes import child_env

    out.print(" ".join(command), highlight=False)
    os.execve(command[0], command, child_env())
