"""The Typer app, its root options (--version, -v) and the entry point, which turns every user
error, Ctrl-C and SIGTERM into one line and an exit code."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from spectra.errors import Interrupted, SpectraError, Terminated
from spectra.output import checked_stdout
from spectra.terminal import shown

try:  # typer vendors click since 0.2x; older typers use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(
    help="Spectral drift analysis of fine-tuning: ΔΣ, ΔD, κ and orthonormality per layer per step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts show [defaults] literally
)


def _version(value: bool) -> None:
    if value:
        from spectra import __version__

        typer.echo(f"spectra {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show the warnings and log lines of the libraries spectra uses."
        ),
    ] = False,
) -> None:
    """Spectral drift analysis of fine-tuning."""
    from spectra import quiet

    ctx.with_resource(quiet.verbose() if verbose else quiet.quiet())


def main() -> None:
    """Entry point: user errors (spectra's and the command line's own, like an unknown option)
    become one line on stderr and exit code 2."""
    if len(sys.argv) <= 1:
        app()  # no arguments: the help
    try:
        with _sigterm_as_ctrl_c(), checked_stdout():  # an unwritable output: an error line too
            code = app(standalone_mode=False)
    except SpectraError as exc:
        _fail(str(exc))
    except ClickException as exc:
        where = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
        _fail(exc.format_message() + where, exc.exit_code)
    except Interrupted as exc:
        _fail(str(exc), _interrupt_code(exc), "interrupted")
    except KeyboardInterrupt as exc:
        _fail("stopped before it finished", _interrupt_code(exc), "interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _terminated(signum, frame) -> None:
    raise Terminated


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) while it lasts, so that every
    cleanup and message of a Ctrl-C follows a ``kill`` too."""
    before = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _interrupt_code(exc: BaseException) -> int:
    """128 + the signal that stopped the command: SIGTERM when a :class:`Terminated` is behind
    ``exc``, else SIGINT."""
    while exc is not None:
        if isinstance(exc, Terminated):
            return 128 + signal.SIGTERM
        exc = exc.__cause__ or exc.__context__
    return 128 + signal.SIGINT


def _fail(message: str, code: int = 2, what: str = "error") -> None:
    """Print ``error: message`` (or ``interrupted: message``) as one line, whatever the message
    holds, and exit."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.secho(f"{what}: {shown(line)}", err=True, fg="red")
    sys.exit(code)
