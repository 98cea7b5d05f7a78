"""The ``medalign`` command line. Heavy imports live inside each command so ``--help`` is instant.

Each area of the package keeps its commands in its own small ``commands.py`` with a
``register(app, synth)`` function; this file only lists them.
"""
from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="medalign",
    help="Joint image-text/omics representations for medical imaging: synth, preprocess, train, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("medalign")
        except PackageNotFoundError:  # a source tree without an install
            v = "unknown"
        typer.echo(f"medalign {v}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the installed medalign version and exit."),
) -> None:
    """medalign: learn joint representations of medical images and their reports or omics."""


synth = typer.Typer(help="Generate synthetic cohorts with known ground truth.", no_args_is_help=True)
app.add_typer(synth, name="synth")

# Explicit list, one line per area, so nothing is registered by an import you cannot see.
COMMAND_MODULES: tuple[str, ...] = (
    "medalign.data.commands",             # split, preprocess, inspect
    "medalign.data.ingest_commands",      # ingest (DICOM export -> cohort)
    "medalign.data.synth.commands",       # synth brain, label-reports
    "medalign.train.commands",            # train, embed, search
    "medalign.eval.commands",             # evaluate, report
    "medalign.index.commands",            # index build/add, serve
    "medalign.experiments.gloria_commands",  # attend, localise
    "medalign.experiments.ssl_commands",     # ssl ...
    "medalign.experiments.gimp_commands",    # synth omics, gimp ...
)


def _register_all() -> None:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(app, synth)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``main([...])`` is callable from tests. Returns the exit code."""
    from medalign.errors import MedAlignError

    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of raising it
        rc = app(args=argv if argv is not None else sys.argv[1:], standalone_mode=False)
    except MedAlignError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except SystemExit as e:
        return int(e.code or 0)
    except typer.Abort:
        return 1
    except OSError as e:  # disk full, read-only folder, permissions: one line naming the file
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        typer.echo(f"error: {e.strerror or type(e).__name__}{where}", err=True)
        return 2
    except Exception as e:
        # usage errors (unknown command, bad option): typer vendors click, so match by behaviour
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
