"""The `edgecompress` command line. Each subcommand group lives in its own module with `register(app)`.

Only this layer prints; library functions compute and return. Exit codes (README "Exit codes"): 0 ok,
1 a check failed (an export check, a failed evaluation), 2 bad input (every EdgeCompressError and usage
error: one line on stderr, the library's `argument` names printed as this CLI's flags, see base.with_flags),
70 a bug (EX_SOFTWARE: any other exception; its traceback and a last line "this is a bug in edgecompress,
please report it: TYPE: MESSAGE" on stderr), 130 interrupted (Ctrl-C). With `--json`, stdout carries only the
JSON document.
"""

from __future__ import annotations

import contextlib
import sys
import traceback

import typer

from edgecompress.cli import base_cmd as _base
from edgecompress.cli import cascade_cmd as _cascade
from edgecompress.cli import demo_cmd as _demo
from edgecompress.cli import evaluate_cmd as _evaluate
from edgecompress.cli import finalize_cmd as _finalize
from edgecompress.cli import inspect_cmd as _inspect
from edgecompress.cli import results_cmd as _results
from edgecompress.cli import search_cmd as _search
from edgecompress.errors import EdgeCompressError

app = typer.Typer(
    name="edgecompress",
    help="Find the best compressed version of an image model for a device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (_base, _inspect, _evaluate, _search, _finalize, _results, _cascade, _demo):
    _module.register(app)


EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 70, 130


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one-line user errors, a traceback for a bug, the documented exit codes,
    JSON-only stdout with --json."""
    args = list(sys.argv[1:] if argv is None else argv)
    guard = _base.json_mode() if "--json" in args else contextlib.nullcontext()
    try:
        with guard:
            rc = app(args=args, standalone_mode=False)  # non-standalone click returns typer.Exit codes
        if isinstance(rc, int) and rc:
            if rc == EXIT_INTERRUPTED:  # typer turns a KeyboardInterrupt into Exit(130) itself
                print("interrupted", file=sys.stderr)
            sys.exit(rc)
    except EdgeCompressError as e:
        print(f"error: {_base.with_flags(str(e))}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors and friends (typer >= 0.26 vendors its own click)
        usage, aborts = _click_types()
        if isinstance(e, usage):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        if isinstance(e, aborts):
            print("aborted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        report_bug(e)
        sys.exit(EXIT_BUG)


def report_bug(e: BaseException) -> None:
    """A bug (not a project error): the full traceback, then one line saying so, on stderr."""
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    lines = str(e).strip().splitlines()
    what = type(e).__name__ + (f": {lines[0]}" if lines else "")
    print(f"this is a bug in edgecompress, please report it: {what}", file=sys.stderr)


def _click_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage-error classes, abort classes) of click and of the click typer vendors."""
    import click

    usage: list[type] = [click.exceptions.ClickException]
    aborts: list[type] = [click.exceptions.Abort, getattr(typer, "Abort", click.exceptions.Abort)]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        usage.append(TyperClickException)
    except ImportError:  # an older typer uses click itself
        pass
    return tuple(usage), tuple(aborts)

if __name__ == "__main__":
    main()
