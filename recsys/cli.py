"""The `recsys` command line. Each sub-command lives in recsys/commands/<name>.py and
exposes `register(app)`; heavy imports happen inside the command, so `--help` is fast."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer
from pydantic import ValidationError

from ranking.errors import ModelLoadError, RequestError
from ranking.folders import ForeignFolderError
from recsys.errors import UserError
from retrieval.errors import RetrievalError

app = typer.Typer(
    help="IRanker recommendation backend.", no_args_is_help=True, pretty_exceptions_enable=False
)

COMMAND_MODULES = (
    "demo",
    "ingest",
    "rank",
    "eval",
    "serve",
    "batch",
    "train",
    "train_ranker",
    "index_episodes",
    "replay",
    "models",
    "convert",
    "committee",
    "db",
    "apikey",
    "jobs",
    "simulate",
    "loop",
    "status",
    "prune",
)
USER_ERRORS = (UserError, RequestError, RetrievalError, ModelLoadError, ForeignFolderError)

for _name in COMMAND_MODULES:
    if importlib.util.find_spec(f"recsys.commands.{_name}") is not None:
        importlib.import_module(f"recsys.commands.{_name}").register(app)


@app.callback()
def _every_command() -> None:
    """Runs before any command: logging in the settings' format (docs/operations.md)."""
    from recsys.logs import configure_logging
    from recsys.settings import get_settings

    configure_logging(get_settings())


def settings_problem(exc: ValidationError) -> str:
    """One line naming each bad environment variable, its value and what it must be."""
    parts = []
    for err in exc.errors():
        name = "RECSYS_" + "_".join(str(x) for x in err["loc"]).upper()
        parts.append(f"{name}={err.get('input')!r}: {err['msg'].lower()}")
    return "invalid setting " + "; ".join(parts)


# deprecation notices raised inside the libraries we call are for this project's
# developers (tests still show them), not for a person running a command
QUIET_MODULES = r"(torch|transformers|peft|accelerate|lightfm|faiss|sentence_transformers)(\.|$)"


def quiet_library_warnings() -> None:
    import warnings

    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_MODULES)


def main() -> None:
    """Entry point: bad input becomes a one-line error and exit code 2, never a traceback."""
    quiet_library_warnings()
    try:
        app(standalone_mode=False)
    except USER_ERRORS as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except ValidationError as exc:  # a bad RECSYS_* variable, read when a command needs it
        if exc.title != "Settings":
            raise
        typer.secho(f"error: {settings_problem(exc)}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
