"""`edgecompress search`: launch or resume a multi-objective compression search (Optuna or Ray Tune)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edgecompress.cli.base import parse_sets

console = Console()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def front_gains_by_trial(summary: Any) -> dict[int, dict[str, Any]]:
    """results.gains of the summary's front rows against the study's uncompressed trial ({} without one)."""
    from edgecompress.errors import EdgeCompressError
    from edgecompress.results.gains import front_gains
    from edgecompress.study import load_study, study_to_frame
    from edgecompress.utils import plain

    if not summary.front:
        return {}
    from edgecompress.study.attrs import FINAL_SUFFIX

    # exactly the summary's study: a search summary's trials, or (after finalize) the finalized study's; "proxy" on
    # a `-final` name would open its search study, whose trial numbers mean other configs
    fidelity = "auto" if summary.study_name.endswith(FINAL_SUFFIX) else "proxy"
    try:
        df = study_to_frame(load_study(summary.study_name, summary.storage, final=fidelity))
    except EdgeCompressError:  # a storage the summary names but this process cannot reopen: no gains column
        return {}
    numbers = [int(r["number"]) for r in summary.front]
    rows = df[df["number"].isin(numbers)]
    g, base = front_gains(df, rows)
    if base is None:
        return {}
    return {int(n): {"base_trial": int(base["number"]), **plain(g.loc[i].to_dict())}
            for i, n in zip(rows.index, rows["number"], strict=True)}


def print_summary(summary: Any) -> None:
    """Counts, where the study is, and the feasible Pareto front as a table with gains against the base."""
    from edgecompress.cli.tables import fmt_pp, fmt_x, print_wide
    from edgecompress.search.progress import describe, format_seconds
    from edgecompress.study import attrs as A

    for w in summary.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(
        f"study [bold]{summary.study_name}[/] ({summary.backend}, sampler {summary.sampler}) in {summary.storage}: "
        f"{summary.new_trials} new trial(s) in {format_seconds(summary.elapsed_s)}"
    )
    console.print(describe(summary.stats))
    if not summary.front:
        console.print("no feasible completed trial yet")
        return
    names = list(summary.front[0]["values"])
    table = Table(title=f"Pareto front ({len(summary.front)} trials)")
    table.add_column("trial", justify="right")
    for n in names:
        table.add_column(n, justify="right")
    for col in ("prune", "depth", "bits w/a", "res", "faster b1", "acc vs base"):
        table.add_column(col, justify="right")
    gains = front_gains_by_trial(summary)
    for row in summary.front:
        c = row[A.CONFIG]
        g = gains.get(int(row["number"]), {})
        cached = f" (={row[A.CACHED_FROM]})" if row.get(A.CACHED_FROM) is not None else ""
        est = "~" if row.get(A.LATENCY_SOURCE) == "estimated" or c.get("w_bits", 32) < 8 else ""
        table.add_row(
            f"{row['number']}{cached}", *(_fmt(row["values"][n]) for n in names), _fmt(c.get("prune")),
            _fmt(c.get("depth")), f"{c.get('w_bits')}/{c.get('a_bits')}",
            _fmt(c.get("resolution")) + (" +dic" if c.get("crop") == "dic" else ""),
            fmt_x(g.get("speedup_b1"), bool(est)),
            fmt_pp(g.get("accuracy_change_pp"), g.get("accuracy_change_low_pp"), g.get("accuracy_change_high_pp")),
        )
    print_wide(table)
    if gains:
        base = next(iter(gains.values()))["base_trial"]
        console.print(f"gains against the base (uncompressed, trial {base}); ~: estimated latency")


def search_cmd(
    config: Path, study: str, trials: int | None = None, timeout: float | None = None,
    sampler: str | None = None, backend: str = "optuna", workers: int = 1, storage: str | None = None,
    seed: int | None = None, address: str | None = None, set_: list[str] | None = None,
    cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, progress: bool = True, as_json: bool = False,
    artefacts: str | None = None, grace_period: float | None = None,
) -> Any:
    """Load the experiment, run the search with a live progress line, print the summary."""
    import optuna

    from edgecompress.cli.base import err_console
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

        from edgecompress.cli.base import emit_json

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
            from edgecompress.cli.finalize import finalize_cmd

            finalize_cmd(study, finalize, finalize_epochs, None, summary.storage, workers, not no_progress)
