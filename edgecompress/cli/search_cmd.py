"""`edgecompress search`: launch or resume a multi-objective compression search (Optuna or Ray Tune)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from edgecompress.cli.base_cmd import parse_sets
from edgecompress.cli.tables import front_gains_by_trial, print_summary

console = Console()


def search_cmd(
    config: Path, study: str, trials: int | None = None, timeout: float | None = None,
    sampler: str | None = None, backend: str = "optuna", workers: int = 1, storage: str | None = None,
    seed: int | None = None, address: str | None = None, set_: list[str] | None = None,
    cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, progress: bool = True, as_json: bool = False,
    artefacts: str | None = None, grace_period: float | None = None,
) -> Any:
    """Load the experiment, run the search with a live progress line, print the summary."""
    import optuna

    from edgecompress.cli.base_cmd import err_console
    from edgecompress.errors import ConfigError
    from edgecompress.search.progress import LineProgress, RichProgress
    from edgecompress.spaces import load_experiment

    if backend not in ("optuna", "ray"):
        raise ConfigError(f"--backend {backend!r}: expected optuna or ray")
    if address and backend != "ray":
        raise ConfigError("--address needs --backend ray")
    exp = load_experiment(config, parse_sets(set_))
    if grace_period is not None:
        if grace_period < 1:
            raise ConfigError(f"--grace-period must be >= 1 second, got {grace_period}")
        import os

        os.environ["EDGECOMPRESS_GRACE_PERIOD_S"] = str(grace_period)  # this process and its workers
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.WARNING)
    # on stderr: a live bar on a terminal; in logs (not a terminal, or --json) one line per trial and epoch
    display: Any = None
    if progress:
        live = err_console.is_terminal and not as_json
        display = RichProgress(err_console, title=study) if live else LineProgress(title=study)
    kwargs: dict[str, Any] = dict(storage=storage, trials=trials, timeout=timeout, sampler=sampler, seed=seed,
                                  progress=display, train_progress=display.train if display is not None else None,
                                  artefacts=artefacts)
    if display is not None:
        display.__enter__()
    try:
        if backend == "ray":
            from edgecompress.search.ray_runner import run_ray_search

            summary = run_ray_search(exp, study, max_concurrent=workers, address=address,
                                     cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, **kwargs)
        else:
            from edgecompress.search.optuna_runner import run_search

            summary = run_search(exp, study, workers=workers, **kwargs)
    finally:
        if display is not None:
            display.__exit__(None, None, None)
    if as_json:
        from dataclasses import asdict

        from edgecompress.cli.base_cmd import emit_json

        emit_json({**asdict(summary), "gains_vs_uncompressed": front_gains_by_trial(summary)})
    else:
        print_summary(summary)
    if summary.interrupted:
        console.print("interrupted: run the same command again to resume")
        raise typer.Exit(130)
    return summary


def register(app: typer.Typer) -> None:
    @app.command()
    def search(
        config: Path = typer.Argument(..., help="experiment YAML"),
        study: str = typer.Option(..., "--study", help="study name (runs/<study>.db; rerun to resume)"),
        trials: int | None = typer.Option(None, "--trials", help="total trials to reach (default: budget)"),
        timeout: float | None = typer.Option(None, "--timeout", help="stop starting trials after S seconds"),
        sampler: str | None = typer.Option(None, "--sampler", help="auto|nsga2|tpe|random|grid|qmc"),
        backend: str = typer.Option("optuna", "--backend", help="optuna or ray"),
        workers: int = typer.Option(1, "--workers", help="parallel worker processes (ray: concurrent trials)"),
        storage: str | None = typer.Option(None, "--storage", help="sqlite:///x.db, postgresql://..., x.journal"),
        seed: int | None = typer.Option(None, "--seed", help="sampler seed (default: the config's seed)"),
        address: str | None = typer.Option(None, "--address", help="existing Ray cluster (HOST:PORT or auto)"),
        set_: list[str] | None = typer.Option(None, "--set", help="override a config key: a.b=value"),
        cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", help="ray: CPUs per trial"),
        gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", help="ray: GPUs per trial (the evaluator uses "
                                              "CUDA where torch has it, else CPU with a note)"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress (bar or log lines)"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
        finalize: int = typer.Option(0, "--finalize", help="then finalize the K most promising configs (0: no)"),
        finalize_epochs: int = typer.Option(3, "--finalize-epochs", help="epochs of each finalized config"),
        artefacts: str | None = typer.Option(None, "--artefacts", help="artefact store: a folder every worker "
                                             "and Ray node reaches (trial models/logits, base-model cache), or "
                                             "an fsspec URL (s3://bucket/dir, file://...) trials upload to; "
                                             "default: the runs folder"),
        grace_period: float | None = typer.Option(None, "--grace-period", help="seconds without a heartbeat "
                                                  "before a running trial of an RDB study counts as dead (120)"),
    ) -> None:
        """Search compressed models (launch or resume a study); prints the Pareto front at the end."""
        summary = search_cmd(config, study, trials, timeout, sampler, backend, workers, storage, seed, address, set_,
                             cpus_per_trial, gpus_per_trial, not no_progress, as_json, artefacts, grace_period)
        if finalize > 0 and not summary.interrupted:
            from edgecompress.cli.finalize_cmd import finalize_cmd

            finalize_cmd(study, finalize, finalize_epochs, None, summary.storage, workers, not no_progress)
