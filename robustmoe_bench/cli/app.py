"""The typer application and its error boundary.

Commands live in sibling modules (one per area) and register themselves on :data:`app`. Errors a user
can cause (:class:`~robustmoe_bench.errors.RobustMoEError`) become one line on stderr and exit code 2;
anything else is reported as an internal error in one line (set ``ROBUSTMOE_TRACEBACK=1`` to see the
traceback) with exit code 1.
"""
from __future__ import annotations

import os
import sys
import warnings

import typer
from typer._click import exceptions as click_exc
from typer.exceptions import Abort
from rich.console import Console
from rich.markup import escape

from ..errors import RobustMoEError, RobustMoEWarning

app = typer.Typer(
    name="robustmoe-bench",
    help="Train and honestly evaluate the adversarial robustness of sparse Mixture-of-Experts CNNs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001,ANN202
    if issubclass(category, RobustMoEWarning):  # ours: one line, no source location
        err_console.print(f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (used by tests and ``main``)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        rv = app(args=argv, prog_name="robustmoe-bench", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Abort:
        err_console.print("[bold red]aborted[/]")
        return 130
    except click_exc.NoArgsIsHelpError as e:
        err_console.print(e.ctx.get_help() if e.ctx else str(e), markup=False)
        return 2
    except click_exc.ClickException as e:  # usage errors: bad option, missing argument, bad choice
        err_console.print(f"[bold red]error:[/] {escape(e.format_message())}", highlight=False, soft_wrap=True)
        return 2
    except RobustMoEError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        return 130
    except Exception as e:  # noqa: BLE001 -- the boundary: one line, not a traceback
        if os.environ.get("ROBUSTMOE_TRACEBACK"):
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
            "(this is a bug; rerun with ROBUSTMOE_TRACEBACK=1 and report it)",
            highlight=False, soft_wrap=True,
        )
        return 1
    return 0


def main() -> None:
    sys.exit(run())
