"""`edgecompress finalize STUDY`: re-train the most promising configs at full fidelity into STUDY-final."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgecompress.cli.base_cmd import parse_sets

err = Console(stderr=True)
console = Console()


def print_finalize(summary: Any) -> None:
    """What was chosen, and the finalized front (the search summary's table)."""
    from edgecompress.cli.tables import print_summary

    t = Table(title=f"finalized from {summary.source_study} ({summary.epochs} epochs, every training image)")
    for c in ("proxy trial", "why", "proxy accuracy", "config"):
        t.add_column(c, justify="left" if c in ("why", "config") else "right")
    for c in summary.chosen:
        cfg = c.config
        t.add_row("-" if c.proxy_trial is None else str(c.proxy_trial), c.reason,
                  "-" if c.proxy_accuracy is None else f"{c.proxy_accuracy:.4f}",
                  f"prune {cfg.get('prune')} depth {cfg.get('depth')} bits {cfg.get('w_bits')}/{cfg.get('a_bits')} "
                  f"res {cfg.get('resolution')}" + (" crop dic" if cfg.get("crop") == "dic" else ""))
    console.print(t)
    for w in summary.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    summary.search.warnings = []
    print_summary(summary.search)
    console.print(f"`edgecompress pareto {summary.source_study}` now shows the finalized results "
                  f"(study {summary.study_name}); `--proxy` shows the search's.")


def finalize_cmd(study: str, top: int, epochs: int, set_: list[str] | None, storage: str | None, workers: int,
                 progress: bool = True, deployable: bool = False) -> Any:
    import optuna

    from edgecompress.search.finalize import finalize_study
    from edgecompress.search.progress import LineProgress, RichProgress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # on stderr: a live bar on a terminal, one line per finished trial in logs (as `search`)
    title = f"finalize {study}"
    display = (RichProgress(err, title=title) if err.is_terminal else LineProgress(title=title)) if progress else None
    if display is not None:
        display.__enter__()
    try:
        summary = finalize_study(study, top=top, epochs=epochs, overrides=parse_sets(set_), storage=storage,
                                 workers=workers, progress=display, deployable=deployable)
    finally:
        if display is not None:
            display.__exit__(None, None, None)
    print_finalize(summary)
    if summary.search.interrupted:
        console.print("interrupted: run the same command again to resume")
        raise typer.Exit(130)
    return summary


def register(app: typer.Typer) -> None:
    from edgecompress.search.finalize import DEFAULT_EPOCHS, DEFAULT_TOP

    @app.command()
    def finalize(
        study: str = typer.Argument(..., help="search study name, .db/.journal path or storage URL"),
        top: int = typer.Option(DEFAULT_TOP, "--top", help="most promising distinct configs to finalize"),
        epochs: int = typer.Option(DEFAULT_EPOCHS, "--epochs", help="fine-tune epochs on every training image"),
        set_: list[str] | None = typer.Option(None, "--set", help="override the final recipe: finetune.lr=0.01"),
        storage: str | None = typer.Option(None, "--storage", help="storage URL or file holding STUDY"),
        workers: int = typer.Option(1, "--workers", help="parallel worker processes"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no live progress display"),
        deployable: bool = typer.Option(False, "--deployable", help="choose among configs whose latency was "
                                        "measured on the study's device (skip sub-8-bit estimates)"),
    ) -> None:
        """Re-train the front's configs (and the uncompressed one) at full fidelity into STUDY-final; resumable."""
        finalize_cmd(study, top, epochs, set_, storage, workers, not no_progress, deployable)
