"""`edgecompress demo CONFIG`: the whole pipeline on a small budget (what `make demo` runs).

train base -> search (proxy fidelity) -> finalize the front at full fidelity -> Pareto table -> export the knee
model -> dynamic cascade -> report (with the cascade). Steps after finalize read the finalized study.
"""

from __future__ import annotations

from pathlib import Path

import typer

from edgecompress.cli.base_cmd import console

# finalize: 2 front configs + the uncompressed one, 1 epoch on all 54k images. With 2 epochs a fresh-clone demo
# took 14:05 on 2 cores one day and 20:09 on another (finalize 4.5 -> 5.9 min, base 4.6 -> 5.6 min, install
# 1.5 -> 4.5 min); the README lists the steps
DEMO_TOP, DEMO_EPOCHS = 2, 1
# the search draws 16 of the config's 24 trials: on 2 cores the 24-trial search took 2.8 to 4.4 min
DEMO_TRIALS = 16


def _run(app: typer.Typer, args: list[str]) -> None:
    try:
        rc = app(args=args, standalone_mode=False)  # click returns typer.Exit codes in this mode
    except SystemExit as e:  # a step's own non-zero exit stops the demo with that code
        if e.code not in (0, None):
            raise
        return
    except typer.Exit as e:
        rc = e.exit_code
    if isinstance(rc, int) and rc:
        console.print(f"[red]step failed:[/] edgecompress {' '.join(args)} (exit {rc})")
        raise SystemExit(rc)


def _step(app: typer.Typer, title: str, args: list[str], optional: bool = False) -> bool:
    """Run one CLI step; a failure stops the demo unless `optional` (then it is reported and skipped)."""
    from edgecompress.errors import EdgeCompressError

    console.rule(f"[bold]{title}[/]  edgecompress {' '.join(args)}")
    if not optional:
        _run(app, args)
        return True
    try:
        _run(app, args)
    except (EdgeCompressError, SystemExit) as e:
        console.print(f"[yellow]skipped:[/] {e}")
        return False
    return True


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        config: Path = typer.Argument(Path("configs/fmnist-quick.yaml"), help="experiment YAML"),
        study: str = typer.Option("demo", help="study name"),
        trials: int = typer.Option(DEMO_TRIALS, help="total trials (0 = the config's budget)"),
        out: Path = typer.Option(Path("runs/demo"), help="folder for the report, export and cascade"),
    ) -> None:
        """Run train-base, search, pareto, export, cascade and report on a small budget."""
        out.mkdir(parents=True, exist_ok=True)
        trial_args = ["--trials", str(trials)] if trials else []
        _step(app, "1/7 base model", ["train-base", str(config)])
        _step(app, "2/7 search", ["search", str(config), "--study", study, *trial_args])
        _step(app, "3/7 finalize the front", ["finalize", study, "--top", str(DEMO_TOP), "--epochs",
                                               str(DEMO_EPOCHS), "--deployable"])
        _step(app, "4/7 Pareto front (finalized)", ["pareto", study])
        _step(app, "5/7 export the knee model", ["export", study, "--knee", "-o", str(out / "export"),
                                                 "--format", "yaml,onnx,torchscript", "--force"])
        cascade = _step(app, "6/7 dynamic cascade", ["cascade", study, "-o", str(out / "cascade")], optional=True)
        _step(app, "7/7 report", ["report", study, "-o", str(out / "report.html"),
                                  *(["--cascade", str(out / "cascade")] if cascade else [])])
        console.rule("[bold green]demo finished")
        console.print(f"report:   {out / 'report.html'}")
        console.print(f"exported: {out / 'export'}")
        console.print(f"cascade:  {out / 'cascade'}")
